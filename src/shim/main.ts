/**
 * containerd-shim-shoal-v2: containerd's runtime v2 shim for shoal (runtime/v2/README.md of
 * containerd 1.6). containerd runs it as
 *   -namespace NS -address SOCK -publish-binary BIN -id ID [-debug] start   (cwd: the bundle)
 *   -namespace NS -address SOCK -publish-binary BIN -id ID -bundle DIR delete
 * with TTRPC_ADDRESS in the environment. `start` forks the long-lived daemon (this file with
 * `daemon`), waits for its ttrpc socket and prints the address; containers of one pod (the CRI
 * annotation io.kubernetes.cri.sandbox-id) share one daemon. `delete` cleans up after a daemon
 * that died: the VM, the rootfs mount, the files, and prints a DeleteResponse.
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { create, toBinary } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { DeleteResponseSchema } from './gen/containerd/shim_pb';
import { readBundleState, removeBundleFiles } from './bundle-state';
import { EventPublisher } from './events';
import { readBundleSpec } from './oci-spec';
import { unmountRootfs } from './rootfs';
import { TaskService } from './task-service';
import { TtrpcServer } from './ttrpc/server';
import { removeVm } from './vm';
import { StateStore } from '../state/store';

/** The CRI annotation that groups a pod's containers into one shim (and, later, one VM). */
const SANDBOX_ANNOTATION = 'io.kubernetes.cri.sandbox-id';
const BOOLEAN_FLAGS = new Set(['debug', 'v', 'version']);
const KNOWN_FLAGS = new Set(['namespace', 'address', 'publish-binary', 'id', 'bundle', 'socket', 'debug', 'v', 'version']);

export interface ShimArgs {
  flags: Record<string, string>;
  action: string;
}

/** Go's flag syntax, as containerd writes it: -name value, -name=value, --name, boolean -debug. */
export function parseShimArgs(argv: string[]): ShimArgs {
  const flags: Record<string, string> = {};
  let action = '';
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg.startsWith('-') && arg !== '-' && action === '') {
      const body = arg.replace(/^--?/, '');
      const eq = body.indexOf('=');
      const name = eq < 0 ? body : body.slice(0, eq);
      if (!KNOWN_FLAGS.has(name)) throw new Error(`unknown flag -${name.slice(0, 40)}`);
      if (eq >= 0) flags[name] = body.slice(eq + 1);
      else if (BOOLEAN_FLAGS.has(name)) flags[name] = 'true';
      else {
        const value = argv[++i];
        if (value === undefined) throw new Error(`flag -${name} needs a value`);
        flags[name] = value;
      }
    } else if (action === '') action = arg;
    else throw new Error(`unexpected argument "${arg.slice(0, 40)}"`);
  }
  return { flags, action };
}

function socketDir(): string {
  return process.env.SHOAL_SHIM_SOCKET_DIR ?? '/run/shoal/shim';
}

/** One socket per containerd (its address), namespace and group: short, under the shim socket dir. */
export function shimSocketPath(address: string, namespace: string, group: string): string {
  const hash = crypto.createHash('sha256').update(`${address}\0${namespace}\0${group}`).digest('hex').slice(0, 32);
  return path.join(socketDir(), `${hash}.sock`);
}

function canConnect(socketPath: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(socketPath);
    const timer = setTimeout(() => { socket.destroy(); resolve(false); }, timeoutMs);
    socket.once('connect', () => { clearTimeout(timer); socket.destroy(); resolve(true); });
    socket.once('error', () => { clearTimeout(timer); resolve(false); });
  });
}

async function start(args: ShimArgs): Promise<void> {
  const { namespace, address, id } = required(args, ['namespace', 'address', 'id']);
  const bundle = process.cwd();
  const spec = readBundleSpec(bundle);
  const group = spec.annotations[SANDBOX_ANNOTATION] ?? id;
  const socketPath = shimSocketPath(address, namespace, group);
  const url = `unix://${socketPath}`;
  if (group !== id && (await canConnect(socketPath))) {
    // Another container of the pod: its shim already serves the group.
    fs.writeFileSync(path.join(bundle, 'address'), url);
    process.stdout.write(url);
    return;
  }
  fs.mkdirSync(socketDir(), { recursive: true, mode: 0o700 });
  // The daemon's output (start's own stdout is containerd's reply channel, which it reads to the
  // end: the daemon must not hold it): containerd's `log` FIFO in the bundle, which containerd
  // reads into its own log, else a file in the bundle.
  const log = openShimLog(bundle);
  const child = spawn(process.execPath, [__filename, '-namespace', namespace, '-address', address, '-id', id, '-socket', socketPath, 'daemon'], {
    cwd: bundle,
    detached: true,
    stdio: ['ignore', log, log],
    env: process.env,
  });
  fs.closeSync(log);
  let exited: string | undefined;
  child.once('exit', (code, signal) => { exited = signal ?? `code ${code}`; });
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (await canConnect(socketPath, 500)) break;
    if (exited !== undefined) throw new Error(`the shim daemon exited at its start (${exited}); see containerd's log (or ${path.join(bundle, 'shim.log')})`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error('the shim daemon did not listen within 15 s');
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  child.unref();
  fs.writeFileSync(path.join(bundle, 'address'), url);
  fs.writeFileSync(path.join(bundle, 'shim.pid'), String(child.pid));
  process.stdout.write(url);
}

/**
 * containerd (runtime v2) makes a FIFO named `log` in the bundle and copies what comes out of it
 * into its own log; opened without blocking, so a containerd that does not read it (none there,
 * ENXIO) leaves the log in shim.log instead.
 */
function openShimLog(bundle: string): number {
  const fifo = path.join(bundle, 'log');
  try {
    if (fs.lstatSync(fifo).isFIFO()) return fs.openSync(fifo, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK | fs.constants.O_NOFOLLOW);
  } catch {
    // no FIFO, or no reader on it
  }
  return fs.openSync(path.join(bundle, 'shim.log'), 'a', 0o600);
}

async function daemon(args: ShimArgs): Promise<void> {
  const { namespace, socket } = required(args, ['namespace', 'socket']);
  // The log is containerd's FIFO: a containerd that went away must not end the shim (EPIPE).
  process.stderr.on('error', () => undefined);
  process.stdout.on('error', () => undefined);
  const log = (line: string): void => { process.stderr.write(`${new Date().toISOString()} shim[${process.pid}] ${line}\n`); };
  const events = new EventPublisher(process.env.TTRPC_ADDRESS ?? '', namespace, log);
  const server = new TtrpcServer();
  server.onError = (method, err) => log(`${method}: ${err.message}`);
  let ending = false;
  const end = async (code: number): Promise<void> => {
    if (ending) return;
    ending = true;
    await Promise.race([events.flush(), new Promise((r) => setTimeout(r, 3000))]);
    server.close();
    fs.rmSync(socket, { force: true });
    process.exit(code);
  };
  const service = new TaskService(namespace, events, log, () => void end(0));
  service.register(server);
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      log(`${signal}: removing the VMs and exiting`);
      void service.removeAll().finally(() => end(0));
    });
  }
  await server.listen(socket);
  log(`listening on ${socket}`);
}

/** Clean-up after a daemon that died (containerd runs this once the shim's connection broke). */
async function deleteAction(args: ShimArgs): Promise<void> {
  const bundle = args.flags.bundle ?? process.cwd();
  const state = readBundleState(bundle);
  // The daemon and its socket first: quick, and nothing of the dead shim answers while the VM goes.
  killDeadShimDaemon(bundle);
  await unmountRootfs(bundle);
  if (state) await removeVm(new StateStore(state.stateDir), state.vmId);
  removeBundleFiles(bundle);
  // As runc's shim: the process is reported killed (128 + SIGKILL), now.
  const response = create(DeleteResponseSchema, { pid: 0, exitStatus: 137, exitedAt: timestampFromDate(new Date()) });
  process.stdout.write(toBinary(DeleteResponseSchema, response));
}

/** A daemon that lives on although containerd lost it (hung): it goes, and so does its socket. */
function killDeadShimDaemon(bundle: string): void {
  try {
    const pid = Number(fs.readFileSync(path.join(bundle, 'shim.pid'), 'utf8').trim());
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (Number.isInteger(pid) && pid > 1 && cmdline.includes(path.join('shim', 'main.js')) && cmdline.includes('daemon')) process.kill(pid, 'SIGKILL');
  } catch {
    // no pid file, or gone
  }
  try {
    const address = fs.readFileSync(path.join(bundle, 'address'), 'utf8').trim().replace(/^unix:\/\//, '');
    if (path.dirname(address) === socketDir()) fs.rmSync(address, { force: true });
  } catch {
    // no address file
  }
}

function required<K extends string>(args: ShimArgs, names: K[]): Record<K, string> {
  const values = {} as Record<K, string>;
  for (const name of names) {
    const value = args.flags[name];
    if (!value) throw new Error(`-${name} is required`);
    values[name] = value;
  }
  return values;
}

export async function main(argv: string[]): Promise<number> {
  let args: ShimArgs;
  try {
    args = parseShimArgs(argv);
  } catch (err) {
    process.stderr.write(`containerd-shim-shoal-v2: ${(err as Error).message}\n`);
    return 2;
  }
  if (args.flags.v !== undefined || args.flags.version !== undefined) {
    process.stdout.write('containerd-shim-shoal-v2:\n  Version:  0.1.0 (shoal)\n');
    return 0;
  }
  try {
    if (args.action === 'start') await start(args);
    else if (args.action === 'delete') await deleteAction(args);
    else if (args.action === 'daemon') {
      await daemon(args);
      return -1; // keeps running
    } else throw new Error(`unknown action "${args.action.slice(0, 40)}" (start, delete)`);
    return 0;
  } catch (err) {
    process.stderr.write(`containerd-shim-shoal-v2: ${(err as Error).message}\n`);
    return 1;
  }
}

if (require.main === module) {
  void main(process.argv.slice(2)).then((code) => { if (code >= 0) process.exitCode = code; });
}
