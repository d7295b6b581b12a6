/**
 * Snapshot of a QEMU VM whose RAM is a private (MAP_PRIVATE, share=off) mapping of its parent
 * snapshot's memory file: a clone, a fork child, an image-cache hit, a startup-snapshot run.
 *
 * Such a VM's RAM is not a file of its own (pages it never wrote live in the parent's file, the
 * rest in anonymous copy-on-write memory), so `x-ignore-shared` has nothing to skip. Instead:
 *
 *   1. a short-lived helper QEMU with the same machine shape is started paused (-S) with
 *      `-incoming defer` and a fresh share=on memory file in /dev/shm (mode 0600);
 *   2. the source is stopped and migrates its whole state (x-ignore-shared off at both ends,
 *      since the capability changes the stream's format) straight into the helper over a Unix
 *      socket; `whilePaused` (the disk copy) runs then, and the source resumes at once. Not live:
 *      with pre-copy rounds, a few snapshots in a hundred (1 of 36 forks in a loop on a loaded
 *      host, 2 in one CI run) restored into a kernel that panicked at once, an hrtimer calling
 *      through a stale pointer: a write the copy missed. The likely cause is that a TCG vCPU
 *      stores to guest RAM without the big lock, so a store that passed its TLB's dirty check
 *      just before the migration thread cleared the page's dirty bit and sent the page is never
 *      sent again. With the vCPUs stopped for the whole copy no dirty tracking is involved. The
 *      pause is the copy of the RAM the guest ever touched (a zero page costs a flag);
 *   3. the helper, which never runs the guest, saves again with `x-ignore-shared` on: device
 *      state to state.bin; its memory file (now the source's RAM at the stop point) is copied
 *      sparse to memory.raw.
 *
 * The result is an ordinary shoal snapshot: later clones map memory.raw MAP_PRIVATE and load
 * state.bin exactly like a first-generation snapshot, whatever the depth. It does not depend on
 * the parent's files.
 *
 * Nothing outlives a failure or a kill -9: the helper runs under a parent-death signal, its
 * memory file is unlinked as soon as QEMU maps it (this process keeps an fd to copy from), and
 * its sockets and stand-in disks live in one directory removed at the end (and among the VM's
 * sockets, which its release sweeps).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ShoalError } from '../../util/errors';
import { sleep, spawnTied } from '../../util/process';
import type { DriveSpec, NetSpec, SnapshotFiles, VmExit } from '../backend';
import { buildQemuArgv, qemuPaths, type QemuLaunch } from './argv';
import { QmpClient } from './qmp';
import { copySparse } from '../../util/copy';

const MONITOR_TIMEOUT_MS = 15_000;
/** A whole-RAM transfer under TCG on a loaded host: seconds; a hung one must not hold the source. */
const MIGRATION_TIMEOUT_MS = 120_000;
/**
 * Bytes per second QEMU may send. Its default (128 MiB/s) would make a 1 GiB guest's copy take
 * 8 s; the stream only crosses a local socket, so the CPU is the only limit.
 */
const MAX_BANDWIDTH = 8 * 1024 * 1024 * 1024;

export interface PrivateSnapshotRequest {
  /** The source's monitor (the source is running). */
  qmp: QmpClient;
  /** How the source was started: its shape is the helper's. */
  launch: QemuLaunch;
  /** Where state.bin and memory.raw go. */
  files: SnapshotFiles;
  /** Runs while the source's vCPUs are stopped at the snapshot point (the disk copy). */
  whilePaused: () => Promise<void>;
  /** Directory for the helper's memory file: tmpfs, so guest RAM never reaches a disk on the way. */
  shmDir: string;
  progress?: (message: string) => void;
}

export interface PrivateSnapshotResult {
  /** How long the source's vCPUs were stopped (QEMU's STOP event to the end of our `cont`). */
  pausedMs: number;
  /** From `migrate` to the source's resume (the source is paused for all of it). */
  sourceMs: number;
  /** The whole snapshot, helper start to memory.raw written. */
  totalMs: number;
  /** Bytes of RAM the source sent (more than its RAM when pages were dirtied during the copy). */
  transferredBytes: number;
}

interface MigrationInfo {
  status?: string;
  'error-desc'?: string;
  ram?: { transferred?: number };
}

export async function snapshotPrivateVm(request: PrivateSnapshotRequest): Promise<PrivateSnapshotResult> {
  const started = Date.now();
  const helperDir = path.join(request.launch.spec.runDir, `helper-${crypto.randomBytes(3).toString('hex')}`);
  fs.mkdirSync(helperDir, { mode: 0o700 });
  let memory: { path: string; fd: number } | undefined;
  let helper: Helper | undefined;
  try {
    memory = createMemoryFile(request.shmDir, request.launch.spec.memoryMiB);
    const launch = await helperLaunch(request.launch, helperDir, memory.path);
    // A source in a user+network namespace (slirp4netns) has its helper there too, for its TAP.
    helper = await startHelper(helperDir, launch, request.launch.net?.namespacePid);
    // QEMU has mapped the file by the time its monitor answers: from now on only our fd and
    // its mapping hold it, so no exit path can leave it behind in /dev/shm.
    fs.rmSync(memory.path, { force: true });
    const incoming = path.join(helperDir, 'in.sock');
    await helper.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: false }] });
    await helper.qmp.execute('migrate-incoming', { uri: `unix:${incoming}` });

    request.progress?.('copying the paused VM\'s memory into a snapshot');
    const source = await migrateStopped(request, incoming, helper);
    await waitForMigration(helper.qmp, 'the helper\'s load', helper.exited);

    request.progress?.('saving device state and guest memory');
    await helper.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await helper.qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(request.files.stateFile)}` });
    await waitForMigration(helper.qmp, 'the helper\'s save', helper.exited);
    await helper.stop();
    helper = undefined;
    // The helper never ran the guest, so its memory file holds the source's RAM at the stop point.
    await copySparse(`/proc/${process.pid}/fd/${memory.fd}`, request.files.memoryFile);
    return { pausedMs: source.pausedMs, sourceMs: source.sourceMs, totalMs: Date.now() - started, transferredBytes: source.transferredBytes };
  } finally {
    helper?.kill();
    if (memory) {
      fs.closeSync(memory.fd);
      fs.rmSync(memory.path, { force: true });
    }
    fs.rmSync(helperDir, { recursive: true, force: true });
  }
}

/**
 * The copy of the stopped source into the helper; once the migration completes, `whilePaused`
 * runs and the source is resumed, also when anything failed (a failed or cancelled migration
 * leaves the source stopped, and it must end up running either way).
 */
async function migrateStopped(request: PrivateSnapshotRequest, uri: string, helper: Helper): Promise<{ pausedMs: number; sourceMs: number; transferredBytes: number }> {
  const { qmp } = request;
  let stoppedAt: number | undefined;
  const onEvent = (event: { event?: string }): void => {
    if (event.event === 'STOP' && stoppedAt === undefined) stoppedAt = Date.now();
  };
  qmp.on('event', onEvent);
  const started = Date.now();
  let info: MigrationInfo | undefined;
  try {
    // The source was restored with x-ignore-shared on; its RAM is private, so the capability
    // would skip nothing, but it changes the stream and must match the helper's.
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: false }] });
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': MAX_BANDWIDTH });
    // Stopped for the whole copy, so the helper gets one consistent image (see the file's comment).
    await qmp.execute('stop');
    await qmp.execute('migrate', { uri: `unix:${uri}` });
    info = await waitForMigration(qmp, 'the copy of the VM', helper.exited);
    await request.whilePaused();
  } catch (err) {
    await qmp.execute('migrate_cancel').catch(() => undefined);
    throw err;
  } finally {
    qmp.off('event', onEvent);
    // Resume whatever happened: the source must keep running.
    const status = (await qmp.execute('query-status').catch(() => undefined)) as { status?: string } | undefined;
    if (status?.status !== 'running') await qmp.execute('cont').catch(() => undefined);
  }
  const resumedAt = Date.now();
  return {
    pausedMs: stoppedAt === undefined ? 0 : resumedAt - stoppedAt,
    sourceMs: resumedAt - started,
    transferredBytes: info.ram?.transferred ?? 0,
  };
}

async function waitForMigration(qmp: QmpClient, what: string, helperExited: Promise<VmExit>): Promise<MigrationInfo> {
  const deadline = Date.now() + MIGRATION_TIMEOUT_MS;
  let gone = false;
  void helperExited.then(() => { gone = true; });
  for (;;) {
    const info = (await qmp.execute('query-migrate')) as MigrationInfo;
    if (info.status === 'completed') return info;
    if (info.status === 'failed' || info.status === 'cancelled') throw new ShoalError(`${what} failed: ${info['error-desc'] ?? info.status}`);
    if (gone) throw new ShoalError(`${what} failed: the helper QEMU exited`);
    if (Date.now() > deadline) throw new ShoalError(`${what} did not finish within ${MIGRATION_TIMEOUT_MS / 1000} s`);
    await sleep(5);
  }
}

/** A fresh tmpfs file for the helper's RAM, readable by this user only, sized like the guest's. */
function createMemoryFile(dir: string, memoryMiB: number): { path: string; fd: number } {
  const file = path.join(dir, `shoal-${crypto.randomBytes(6).toString('hex')}.ram`);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o600);
  try {
    fs.ftruncateSync(fd, memoryMiB * 1024 * 1024);
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
    throw err;
  }
  return { path: file, fd };
}

/**
 * The helper's command line: the source's machine, devices and drive ids, so the device state
 * loads and saves unchanged. What it must not share with the source: its sockets, its console,
 * its writable disks (stand-ins of the same size: a migration carries no disk contents, and the
 * source holds its disk's write lock), and its network backend (user-mode networking without
 * forwards, or a TAP of its own that QEMU creates and that goes with it; the backend's type must
 * match, as its features and state are in the stream).
 */
export async function helperLaunch(source: QemuLaunch, helperDir: string, memoryFile: string): Promise<QemuLaunch> {
  const drives: DriveSpec[] = [];
  for (const drive of source.drives) {
    if (drive.readOnly) {
      drives.push(drive);
      continue;
    }
    const standIn = path.join(helperDir, `${drive.id}.img`);
    const fd = fs.openSync(standIn, 'wx', 0o600);
    try {
      fs.ftruncateSync(fd, (await fs.promises.stat(drive.path)).size);
    } finally {
      fs.closeSync(fd);
    }
    drives.push({ ...drive, path: standIn });
  }
  const launch: QemuLaunch = {
    spec: { ...source.spec, runDir: helperDir },
    drives,
    consoleLog: path.join(helperDir, 'console.log'),
    paths: qemuPaths(helperDir),
    memory: { path: memoryFile, share: true },
    incoming: true,
  };
  const net = helperNet(source.net);
  if (net) launch.net = net;
  return launch;
}

export function helperNet(net: NetSpec | undefined): NetSpec | undefined {
  if (!net) return undefined;
  if (net.userMode) return { mac: net.mac, userMode: { forwards: [] } };
  if (net.tap) return { mac: net.mac, tap: `shoalh${crypto.randomBytes(4).toString('hex')}` };
  return undefined;
}

interface Helper {
  qmp: QmpClient;
  exited: Promise<VmExit>;
  stop(): Promise<void>;
  kill(): void;
}

async function startHelper(helperDir: string, launch: QemuLaunch, namespacePid: number | undefined): Promise<Helper> {
  // Paused for good (-S): the guest never runs in the helper, so nothing changes its memory
  // between the load and the save, and it never touches a disk or the network.
  const argv = [...buildQemuArgv(launch), '-S'];
  const stderrPath = path.join(helperDir, 'qemu.log');
  const stderrFd = fs.openSync(stderrPath, 'a', 0o600);
  const child = spawnTied('qemu-system-x86_64', argv, { stdio: ['ignore', 'ignore', stderrFd] }, namespacePid !== undefined ? { namespacesOf: namespacePid } : {});
  fs.closeSync(stderrFd);
  const exited = new Promise<VmExit>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  const early = exited.then(() => {
    throw new ShoalError(`the helper QEMU exited at start${tail(stderrPath)}`);
  });
  early.catch(() => undefined);
  let qmp: QmpClient;
  try {
    qmp = await Promise.race([QmpClient.connect(launch.paths.qmpSocket, MONITOR_TIMEOUT_MS), early]);
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  return {
    qmp,
    exited,
    stop: async () => {
      await Promise.race([qmp.execute('quit').catch(() => undefined), sleep(2000)]);
      if ((await Promise.race([exited, sleep(3000).then(() => 'timeout' as const)])) === 'timeout') child.kill('SIGKILL');
      qmp.close();
    },
    kill: () => {
      child.kill('SIGKILL');
      qmp.close();
    },
  };
}

function tail(file: string): string {
  try {
    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    const last = lines[lines.length - 1];
    return last ? `: ${last}` : '';
  } catch {
    return '';
  }
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}
