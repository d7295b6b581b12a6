/**
 * `--network slirp4netns` (and `rootless` on Firecracker, which has no user-mode networking of
 * its own): the VM's TAP lives in a user+network namespace of its own, and slirp4netns gives
 * that namespace user-mode networking. No privileges needed, as podman's rootless containers.
 *
 * Inside the namespace (one per VM, so clones keep their source's TAP name, MAC and address,
 * which is how Firecracker's docs network clones):
 *
 *     VMM ── tap0 ──┐
 *                   br0          (no address: the namespace is only a wire)
 *     slirp4netns ─ s0 ┘
 *
 * The guest has slirp's "recommended" address 10.0.2.100, slirp's gateway 10.0.2.2 (which
 * reaches the host's loopback only with allowHostLoopback: slirp4netns runs with
 * --disable-host-loopback otherwise) and slirp's DNS 10.0.2.3 (the host's resolver, even one on
 * the host's loopback). Published ports
 * are slirp4netns host forwards, added over its API socket before the VM starts.
 *
 * Nothing outlives the supervisor: the namespace's holder and slirp4netns run under a
 * parent-death signal, slirp4netns also exits when its exit pipe closes, and the namespace
 * (with its TAP and bridge) goes when its last process does.
 */
import type { ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { ShoalError } from '../util/errors';
import { enterNamespacesArgv, spawnTied, which } from '../util/process';
import type { PortForward } from '../vmm/backend';

const execFileAsync = promisify(execFile);

/** The VMM's TAP inside the namespace: the same name in every VM's namespace. */
export const NAMESPACE_TAP = 'tap0';
export const NAMESPACE_GUEST_ADDRESS = '10.0.2.100';
export const NAMESPACE_GATEWAY = '10.0.2.2';
export const NAMESPACE_NAMESERVER = '10.0.2.3';
export const NAMESPACE_PREFIX_LENGTH = 24;
const SLIRP_TAP = 's0';
const BRIDGE = 'br0';
const START_TIMEOUT_MS = 10_000;
const TUN_DEVICE = '/dev/net/tun';

export interface NamespaceNetwork {
  /** A process whose user and network namespaces the VMM must join. */
  readonly holderPid: number;
  /** Stops slirp4netns and the holder; the namespace goes with them (idempotent). */
  close(): Promise<void>;
}

/** Why this mode cannot run here, or null. */
export function namespaceNetworkUnavailable(): string | null {
  for (const [tool, pkg] of [['slirp4netns', 'slirp4netns'], ['unshare', 'util-linux'], ['nsenter', 'util-linux'], ['ip', 'iproute2']] as const) {
    if (!which(tool)) return `${tool} is not installed (Debian: apt-get install ${pkg})`;
  }
  try {
    // Making a TAP, even in a namespace of one's own, opens /dev/net/tun (udev makes it 0666).
    fs.accessSync(TUN_DEVICE, fs.constants.R_OK | fs.constants.W_OK);
  } catch {
    return `${TUN_DEVICE} is not readable and writable by this user (udev normally makes it mode 0666: chmod 0666 ${TUN_DEVICE})`;
  }
  return null;
}

/** A helper process (the holder, slirp4netns) with the tail of its stderr, for error messages. */
class Helper {
  private stderr = '';

  constructor(readonly child: ChildProcess) {
    child.stderr?.on('data', (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString()).slice(-2000);
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Resolves on the first byte on `stream` (its ready signal); rejects if it ends first or takes too long. */
  ready(stream: NodeJS.ReadableStream, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const fail = (why: string): void => {
        clearTimeout(timer);
        reject(new ShoalError(`${what} failed: ${why}`));
      };
      const timer = setTimeout(() => fail(`no ready signal after ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
      stream.once('data', () => {
        clearTimeout(timer);
        resolve();
      });
      this.child.once('exit', (code, signal) => {
        // Give its stderr a moment to be read to the end, so the message has its last words.
        const report = (): void => {
          const said = this.errorLines();
          fail(`exited (${signal ?? code})${said ? `: ${said}` : ''}`);
        };
        const stderr = this.child.stderr;
        if (!stderr || stderr.readableEnded) report();
        else {
          const cap = setTimeout(report, 200);
          stderr.once('end', () => {
            clearTimeout(cap);
            report();
          });
        }
      });
      this.child.once('error', (err) => fail(err.message));
    });
  }

  /** What it said on stderr, on one line, without slirp4netns's chatter (tap fds, its settings). */
  private errorLines(): string {
    const lines = this.stderr.split('\n').map((l) => l.trim()).filter((l) => l && !/^(sent|received) tapfd|^\*|^Starting slirp/.test(l));
    return lines.join('; ').slice(0, 300);
  }

  stop(): Promise<void> {
    const { child } = this;
    if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    });
  }
}

/** The holder: unshares, builds the bridge and the VMM's TAP, says so, and sleeps. */
function startHolder(): Helper {
  const script = [
    'set -e',
    'ip link set lo up',
    `ip link add ${BRIDGE} type bridge`,
    `ip tuntap add ${NAMESPACE_TAP} mode tap`,
    `ip link set ${NAMESPACE_TAP} master ${BRIDGE} up`,
    `ip link set ${BRIDGE} up`,
    'echo ready',
    'exec sleep infinity',
  ].join('\n');
  return new Helper(spawnTied('unshare', ['--user', '--map-root-user', '--net', '--', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'pipe'] }));
}

/** slirp4netns on the holder's namespace, with an exit pipe (fd 3) and a ready pipe (fd 4). */
function startSlirp(holderPid: number, apiSocket: string, ipv6: boolean, allowHostLoopback: boolean): Helper {
  const args = ['--exit-fd=3', '--ready-fd=4', `--api-socket=${apiSocket}`, '--enable-sandbox', '--enable-seccomp'];
  if (ipv6) args.push('--enable-ipv6');
  // Without it, 10.0.2.2 (and fd00::2) is the host's loopback: every service bound to 127.0.0.1
  // on the host, which a guest has no business reaching unless the user asked for it.
  if (!allowHostLoopback) args.push('--disable-host-loopback');
  args.push(String(holderPid), SLIRP_TAP);
  return new Helper(spawnTied('slirp4netns', args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] }));
}

/** One request on slirp4netns's API socket (one JSON object each way). */
export function slirpApi(apiSocket: string, request: object, timeoutMs = 5000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(apiSocket);
    let reply = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new ShoalError(`slirp4netns did not answer on ${apiSocket} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('connect', () => socket.end(JSON.stringify(request)));
    socket.on('data', (chunk: Buffer) => {
      reply += chunk.toString();
      try {
        const parsed = JSON.parse(reply) as Record<string, unknown>;
        clearTimeout(timer);
        socket.destroy();
        resolve(parsed);
      } catch {
        // not all of it yet
      }
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(new ShoalError(`slirp4netns API ${apiSocket}: ${err.message}`));
    });
    socket.on('close', () => {
      clearTimeout(timer);
      if (reply === '') reject(new ShoalError(`slirp4netns closed its API socket without an answer`));
    });
  });
}

async function addForward(apiSocket: string, f: PortForward): Promise<void> {
  const reply = await slirpApi(apiSocket, {
    execute: 'add_hostfwd',
    arguments: { proto: f.proto, host_addr: f.hostAddress, host_port: f.hostPort, guest_addr: NAMESPACE_GUEST_ADDRESS, guest_port: f.guestPort },
  });
  const error = reply.error as { desc?: string } | undefined;
  if (error) throw new ShoalError(`cannot publish ${f.hostAddress}:${f.hostPort}/${f.proto}: ${error.desc ?? JSON.stringify(error)}`);
}

/**
 * Creates the namespace, its bridge and TAP, and slirp4netns with the published ports.
 * `runDir` holds the API socket. On any failure everything started is stopped again.
 */
export async function startNamespaceNetwork(opts: { runDir: string; forwards: PortForward[]; ipv6?: boolean; allowHostLoopback?: boolean }): Promise<NamespaceNetwork> {
  const unavailable = namespaceNetworkUnavailable();
  if (unavailable) throw new ShoalError(`--network slirp4netns: ${unavailable}`);
  const started: Helper[] = [];
  const closeAll = async (): Promise<void> => {
    // slirp4netns first, then the holder (the namespace goes with its last process).
    for (const helper of started.reverse()) await helper.stop();
    started.length = 0;
  };
  try {
    const holder = startHolder();
    started.push(holder);
    await holder.ready(holder.child.stdout!, 'creating the network namespace (unshare --user --net)');
    const holderPid = holder.pid;
    const apiSocket = path.join(opts.runDir, 'slirp.sock');
    const slirp = startSlirp(holderPid, apiSocket, opts.ipv6 ?? true, opts.allowHostLoopback === true);
    started.push(slirp);
    await slirp.ready(slirp.child.stdio[4] as NodeJS.ReadableStream, 'starting slirp4netns');
    const [nsenter, ...nsenterArgs] = enterNamespacesArgv(holderPid);
    await execFileAsync(nsenter!, [...nsenterArgs, 'ip', 'link', 'set', SLIRP_TAP, 'master', BRIDGE, 'up']).catch((err: Error & { stderr?: string }) => {
      throw new ShoalError(`joining slirp4netns to the namespace's bridge failed: ${(err.stderr ?? err.message).trim()}`);
    });
    for (const f of opts.forwards) await addForward(apiSocket, f);
    return { holderPid, close: closeAll };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
