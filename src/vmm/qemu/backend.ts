/**
 * The QEMU microvm backend: one qemu-system-x86_64 process per VM, driven over QMP.
 * TCG works everywhere; KVM is used when the boot probe says it works on this host.
 *
 * Snapshots keep guest RAM in a file (memory-backend-file, share=on) and migrate only device
 * state with x-ignore-shared; a clone maps a copy of that file MAP_PRIVATE (share=off), so all
 * clones of one snapshot share its pages through the page cache.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { ShoalError } from '../../util/errors';
import { sleep, spawnTied, which } from '../../util/process';
import { pauseAndSnapshot, type RestoreSpec, type RunningSnapshotOptions, type RunningSnapshotTimings, type SnapshotFiles, type SnapshotKind, type VmExit, type VmHandle, type VmmBackend, type VmSpec } from '../backend';
import { vmmTraits } from '../traits';
import { buildQemuArgv, qemuPaths, type QemuLaunch } from './argv';
import { snapshotPrivateVm, type PrivateSnapshotRequest, type PrivateSnapshotResult } from './private-snapshot';
import { waitForMigration } from './migration-status';
import { QmpClient } from './qmp';
import { copySparse } from '../../util/copy';

export const QEMU_BINARY = 'qemu-system-x86_64';
const MONITOR_TIMEOUT_MS = 15_000;

export class QemuBackend implements VmmBackend {
  readonly kind = 'qemu' as const;
  readonly createsTap = true;
  readonly traits = vmmTraits('qemu');

  async unavailableReason(): Promise<string | null> {
    if (!which(QEMU_BINARY)) return `${QEMU_BINARY} not found: apt-get install qemu-system-x86`;
    if (!which('setpriv')) return 'setpriv not found: apt-get install util-linux';
    return null;
  }

  async boot(spec: VmSpec): Promise<VmHandle> {
    const paths = qemuPaths(spec.runDir);
    const launch: QemuLaunch = { spec, drives: spec.drives, consoleLog: spec.consoleLog, paths };
    if (spec.net) launch.net = spec.net;
    if (spec.memoryFile) launch.memory = { path: spec.memoryFile, share: true };
    return startQemu(launch, buildQemuArgv(launch), spec.memoryFile);
  }

  async restore(spec: RestoreSpec): Promise<VmHandle> {
    if (spec.memory.kind !== 'file') throw new ShoalError('QEMU restores from a memory file only (the Uffd backend is Firecracker\'s)');
    const paths = qemuPaths(spec.runDir);
    const launch: QemuLaunch = {
      spec: { ...spec.source, runDir: spec.runDir, id: spec.id },
      drives: spec.drives,
      consoleLog: spec.consoleLog,
      paths,
      memory: { path: spec.memory.path, share: false },
      incoming: true,
    };
    if (spec.net) launch.net = spec.net;
    const argv = buildQemuArgv(launch);
    if (spec.resume === false) argv.push('-S');
    const handle = await startQemu(launch, argv, undefined);
    try {
      await handle.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
      await handle.qmp.execute('migrate-incoming', { uri: `exec:cat ${shellQuote(spec.snapshot.stateFile)}` });
      await handle.waitForIncoming(spec.resume !== false);
    } catch (err) {
      handle.kill();
      throw new ShoalError(`restoring ${spec.snapshot.stateFile} failed: ${(err as Error).message}${await handle.stderrTail()}`);
    }
    return handle;
  }
}

async function startQemu(launch: QemuLaunch, argv: string[], memoryFile: string | undefined): Promise<QemuVmHandle> {
  const { runDir } = launch.spec;
  const { paths } = launch;
  const namespacePid = launch.net?.namespacePid;
  fs.mkdirSync(runDir, { recursive: true });
  for (const socket of [paths.qmpSocket, paths.agentSocket]) fs.rmSync(socket, { force: true });
  const stderrPath = path.join(runDir, 'qemu.log');
  const stderrFd = fs.openSync(stderrPath, 'a');
  const netnsPath = launch.net?.netnsPath;
  const tie = namespacePid !== undefined ? { namespacesOf: namespacePid } : netnsPath !== undefined ? { netnsPath } : {};
  const child = spawnTied(QEMU_BINARY, argv, { stdio: ['ignore', 'ignore', stderrFd] }, tie);
  fs.closeSync(stderrFd);
  const exited = new Promise<VmExit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const earlyExit = exited.then(async (e) => {
    throw new ShoalError(`QEMU exited at start (code ${e.code ?? e.signal})${await readTail(stderrPath)}`);
  });
  let qmp: QmpClient;
  try {
    qmp = await Promise.race([QmpClient.connect(paths.qmpSocket, MONITOR_TIMEOUT_MS), earlyExit]);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  earlyExit.catch(() => undefined);
  return new QemuVmHandle(child, qmp, launch, exited, stderrPath, memoryFile);
}

export class QemuVmHandle implements VmHandle {
  readonly kind = 'qemu' as const;
  readonly pid: number;

  constructor(
    private readonly child: ChildProcess,
    readonly qmp: QmpClient,
    /** How this QEMU was started: a snapshot of a private-memory VM starts a helper of the same shape. */
    readonly launch: QemuLaunch,
    readonly exited: Promise<VmExit>,
    private readonly stderrPath: string,
    private readonly memoryFile: string | undefined,
  ) {
    // setpriv execs QEMU in place, so the child's pid is QEMU's pid.
    this.pid = child.pid ?? -1;
  }

  async connectAgent(timeoutMs: number): Promise<Duplex> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        return await new Promise<net.Socket>((resolve, reject) => {
          const socket = net.connect(this.launch.paths.agentSocket);
          socket.once('connect', () => resolve(socket));
          socket.once('error', reject);
        });
      } catch (err) {
        if (Date.now() > deadline) throw new ShoalError(`cannot connect to the agent socket: ${(err as Error).message}`);
        await sleep(25);
      }
    }
  }

  async pause(): Promise<void> {
    await this.qmp.execute('stop');
  }

  async resume(): Promise<void> {
    await this.qmp.execute('cont');
  }

  async snapshot(files: SnapshotFiles, kind: SnapshotKind): Promise<void> {
    if (!this.memoryFile) throw new ShoalError('this VM was not started with a memory file, so it cannot be snapshotted');
    if (kind === 'diff') throw new ShoalError('QEMU snapshots are full snapshots (memory is a file already); use kind "full"');
    await this.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await this.qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(files.stateFile)}` });
    await waitForMigration(this.qmp, { what: 'QEMU snapshot', intervalMs: 10 });
    // The VM is paused, so its RAM file is stable while we copy it.
    await copySparse(this.memoryFile, files.memoryFile);
  }

  /**
   * A booted VM: pause, device state (its RAM is its own file: x-ignore-shared), whilePaused,
   * resume. A restored VM: its parent's memory plus the pages it changed (./private-snapshot.ts).
   */
  async snapshotRunning(files: SnapshotFiles, options: RunningSnapshotOptions): Promise<RunningSnapshotTimings> {
    if (!this.memoryIsPrivate) return pauseAndSnapshot(this, files, options);
    const result = await this.snapshotPrivate(files, { whilePaused: options.whilePaused, ...(options.progress ? { progress: options.progress } : {}) });
    return { pausedMs: result.pausedMs };
  }

  /**
   * Whether this VM's RAM is a private mapping of a snapshot's memory file (a restored VM), so
   * that a snapshot of it is its parent's memory plus the pages it changed (./private-snapshot.ts).
   */
  get memoryIsPrivate(): boolean {
    return this.launch.memory?.share === false;
  }

  /**
   * Snapshot of a running restored VM into an ordinary snapshot (device state + a memory file of
   * its own). `whilePaused` runs while the vCPUs are stopped at the snapshot point; the VM runs
   * again when this returns.
   */
  snapshotPrivate(files: SnapshotFiles, options: Pick<PrivateSnapshotRequest, 'whilePaused' | 'progress'>): Promise<PrivateSnapshotResult> {
    if (!this.memoryIsPrivate) throw new ShoalError('this VM owns its memory file; it is snapshotted in place');
    return snapshotPrivateVm({ ...options, qmp: this.qmp, pid: this.pid, launch: this.launch, files });
  }

  async waitForIncoming(expectRunning: boolean): Promise<void> {
    for (;;) {
      const status = (await this.qmp.execute('query-status')) as { status: string };
      if (status.status === 'running' || (!expectRunning && status.status === 'paused')) return;
      if (status.status === 'postmigrate' || status.status === 'internal-error' || status.status === 'shutdown') {
        throw new Error(`VM in state ${status.status} after restore`);
      }
      const migration = (await this.qmp.execute('query-migrate')) as { status?: string; 'error-desc'?: string };
      if (migration.status === 'failed') throw new Error(migration['error-desc'] ?? 'incoming migration failed');
      if (migration.status === 'completed' && status.status === 'paused') {
        // The stream carries the source's run state; a snapshot is taken of a paused source, so
        // the destination lands paused too and must be started explicitly.
        if (!expectRunning) return;
        await this.qmp.execute('cont');
        continue;
      }
      await sleep(10);
    }
  }

  async shutdown(timeoutMs: number): Promise<VmExit> {
    const timeout = sleep(timeoutMs).then(() => 'timeout' as const);
    if ((await Promise.race([this.exited, timeout])) === 'timeout') {
      await Promise.race([this.qmp.execute('quit').catch(() => undefined), sleep(1000)]);
      if ((await Promise.race([this.exited, sleep(2000).then(() => 'timeout' as const)])) === 'timeout') this.kill();
    }
    this.qmp.close();
    return this.exited;
  }

  kill(): void {
    this.child.kill('SIGKILL');
    this.qmp.close();
  }

  stderrTail(): Promise<string> {
    return readTail(this.stderrPath);
  }
}

async function readTail(file: string): Promise<string> {
  try {
    const text = (await fs.promises.readFile(file, 'utf8')).trim();
    if (!text) return '';
    const lines = text.split('\n');
    return `: ${lines[lines.length - 1]}`;
  } catch {
    return '';
  }
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
