/**
 * A containerd (Debian's 1.6.20) owned by one e2e file: its own root, state, sockets and
 * config.toml in a temp dir (never the host's /run/containerd), the project's bin/ first on its
 * PATH (so it finds containerd-shim-shoal-v2), shoal's state in the test's sandbox and the shims'
 * sockets in the temp dir. `ctr` against it, and the checks for what must be left behind.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ShoalSandbox } from './shoal-cli';
import { waitUntil } from './shoal-cli';

const PROJECT = path.resolve(__dirname, '..', '..', '..');

export const haveContainerd = fs.existsSync('/usr/bin/containerd') && fs.existsSync('/usr/bin/ctr');

export interface CtrResult { code: number | null; stdout: string; stderr: string }

/** The snapshotters that need a filesystem or a device this host lacks: off, for a quiet log. */
const UNUSED_SNAPSHOTTERS = ['io.containerd.snapshotter.v1.btrfs', 'io.containerd.snapshotter.v1.zfs', 'io.containerd.snapshotter.v1.aufs', 'io.containerd.snapshotter.v1.devmapper'];

export class TestContainerd {
  readonly dir: string;
  readonly socket: string;
  readonly shimSockets: string;
  private child: ChildProcess | undefined;

  constructor(label: string, private readonly sandbox: ShoalSandbox) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `${label}-ctrd-`));
    this.socket = path.join(this.dir, 'c.sock');
    this.shimSockets = path.join(this.dir, 's');
  }

  /**
   * Writes config.toml and starts containerd; resolves once ctr reaches it. `cri`: the CRI
   * plugin's TOML (its [plugins."io.containerd.grpc.v1.cri"...] tables); without it CRI is off.
   */
  async start(cri?: string): Promise<void> {
    fs.mkdirSync(this.shimSockets, { mode: 0o700 });
    const disabled = cri === undefined ? ['io.containerd.grpc.v1.cri', ...UNUSED_SNAPSHOTTERS] : UNUSED_SNAPSHOTTERS;
    fs.writeFileSync(path.join(this.dir, 'config.toml'), [
      'version = 2',
      `root = "${this.dir}/root"`,
      `state = "${this.dir}/state"`,
      `disabled_plugins = [${disabled.map((p) => `"${p}"`).join(', ')}]`,
      '[grpc]',
      `  address = "${this.socket}"`,
      '[ttrpc]',
      `  address = "${this.socket}.ttrpc"`,
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = "${this.dir}/opt"`,
      cri ?? '',
      '',
    ].join('\n'));
    const log = fs.openSync(this.logFile, 'a');
    this.child = spawn('containerd', ['--config', path.join(this.dir, 'config.toml')], {
      stdio: ['ignore', log, log],
      env: { ...this.sandbox.env(), PATH: `${path.join(PROJECT, 'bin')}:${process.env.PATH}`, SHOAL_SHIM_SOCKET_DIR: this.shimSockets },
    });
    fs.closeSync(log);
    await waitUntil('containerd to serve', 15_000, async () => (await this.ctr('default', ['version'], { timeoutMs: 5000 })).code === 0);
  }

  get logFile(): string {
    return path.join(this.dir, 'containerd.log');
  }

  /** A task's bundle (containerd's runtime v2 state). */
  bundleOf(namespace: string, id: string): string {
    return path.join(this.dir, 'state', 'io.containerd.runtime.v2.task', namespace, id);
  }

  ctr(namespace: string, args: string[], options: { input?: string; timeoutMs?: number } = {}): Promise<CtrResult> {
    return new Promise((resolve) => {
      const child = spawn('ctr', ['-a', this.socket, '-n', namespace, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (d: Buffer) => out.push(d));
      child.stderr.on('data', (d: Buffer) => err.push(d));
      const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 90_000);
      child.stdin.end(options.input ?? '');
      child.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
      });
    });
  }

  /** Stops containerd, kills any shim of its left running, unmounts and removes the temp dir. */
  async stop(): Promise<void> {
    const child = this.child;
    if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await waitUntil('containerd to exit', 10_000, () => child.exitCode !== null || child.signalCode !== null).catch(() => child.kill('SIGKILL'));
    }
    for (const pid of processesNaming(this.shimSockets)) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    }
  }

  /** After stop() and the sandbox's cleanup: no mount under the dir, no dir. */
  removeFiles(): void {
    // For a failure's post-mortem: SHOAL_TEST_CONTAINERD_LOG=FILE keeps containerd's log there.
    const keep = process.env.SHOAL_TEST_CONTAINERD_LOG;
    if (keep) fs.copyFileSync(this.logFile, keep);
    for (const mount of mountsUnder(this.dir).reverse()) spawnSync('umount', ['-l', mount]);
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Pids of the processes whose command line contains `text` (not this one). */
export function processesNaming(text: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(text)) pids.push(Number(entry));
    } catch {
      // gone
    }
  }
  return pids;
}

/** Mount points (this mount namespace's) under `prefix`. */
export function mountsUnder(prefix: string): string[] {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(prefix));
}

/** shoal's VM ids in a sandbox's state dir. */
export function vmIdsOf(sandbox: ShoalSandbox): string[] {
  try {
    return fs.readdirSync(path.join(sandbox.stateDir, 'vms'));
  } catch {
    return [];
  }
}
