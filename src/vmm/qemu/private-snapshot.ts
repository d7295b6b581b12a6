/**
 * Snapshot of a QEMU VM whose RAM is a private (MAP_PRIVATE, share=off) mapping of its parent
 * snapshot's memory file: a clone, a fork child, an image-cache hit, a startup-snapshot run.
 *
 * Such a VM's memory is its parent's file plus the pages it wrote since its restore, so the
 * snapshot is built that way, in time and space in proportion to what it changed:
 *
 *   1. while the VM runs: memory.raw becomes a copy of the parent's file (a reflink where the
 *      filesystem has them, else sparse). The file is read through the VMM's own mapping
 *      (/proc/PID/map_files), so it is the very file the VM runs on even if its path was
 *      replaced since; nobody writes it (every VM maps it privately);
 *   2. the device state: QEMU migrates (x-ignore-shared on, as for every snapshot) into a socket
 *      of ours, live: its passes over RAM run while the guest runs, and at its end QEMU stops
 *      the vCPUs, sends what changed in the last pass and the device state. Since the RAM is
 *      private the stream carries its pages; ./migration-stream.ts drops them, leaving the same
 *      state.bin a first-generation snapshot has (QEMU 7.2 cannot be told to leave a private
 *      block out);
 *   3. still stopped: the pages the VM wrote since its restore, found by /proc/PID/pagemap and
 *      read from /proc/PID/mem, are written into memory.raw at their offsets (./dirty-pages.ts);
 *      `whilePaused` runs (the disk copy), and the VM resumes.
 *
 * Why the RAM is not taken from the migration stream: with pre-copy passes under TCG, a few
 * snapshots in a hundred (an earlier version) restored into a kernel that panicked at once. A TCG
 * vCPU stores to guest RAM without the big lock, so a store racing the clearing of a page's dirty
 * bit is never sent again. Here the stream's RAM is thrown away and the dirty tracking decides
 * nothing: memory.raw is read from the stopped VM, at the same instant as its device state.
 *
 * The result is an ordinary snapshot: clones map memory.raw MAP_PRIVATE and load state.bin like
 * a first-generation one's, whatever the depth, and it does not depend on the parent's files.
 * Nothing outlives a failure or a kill -9: no helper process, only the socket in the VM's run
 * directory (removed here, and swept with the VM's directory), and memory.raw/state.bin in the
 * snapshot's temp directory, which the caller removes on failure.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { copySparse } from '../../util/copy';
import { ShoalError } from '../../util/errors';
import type { SnapshotFiles } from '../backend';
import type { QemuLaunch } from './argv';
import { copyDirtyPages, privateFileMappings, type MappingSegment } from './dirty-pages';
import { waitForMigration } from './migration-status';
import { RamPageFilter } from './migration-stream';
import type { QmpClient } from './qmp';

/** The migration under TCG on a loaded host: seconds; a hung one must not hold the VM. */
const MIGRATION_TIMEOUT_MS = 120_000;
/**
 * Bytes per second QEMU may send. Its default (128 MiB/s) would make the stream of a 1 GiB
 * guest, whose pages are dropped as they come, take seconds; it only crosses a local socket.
 */
const MAX_BANDWIDTH = 8 * 1024 * 1024 * 1024;
/**
 * The pause QEMU aims at for its last pass (its default is 300 ms): the pages of that pass are
 * dropped anyway, but they are still read and sent while the vCPUs are stopped.
 */
const DOWNTIME_LIMIT_MS = 20;
/** How long the guest may run while the migration's passes go on; then it is stopped for the rest. */
const LIVE_PHASE_MS = 10_000;
/** QEMU names a memory backend's RAM block after its object id (argv.ts: id=ram). */
const GUEST_RAM_BLOCK = 'ram';

export interface PrivateSnapshotRequest {
  /** The source's monitor (the source is running). */
  qmp: QmpClient;
  /** The VMM's pid: its mapping of the parent's file is read through /proc. */
  pid: number;
  /** How the source was started (its memory file is the parent's). */
  launch: QemuLaunch;
  /** Where state.bin and memory.raw go. */
  files: SnapshotFiles;
  /** Runs while the source's vCPUs are stopped at the snapshot point (the disk copy). */
  whilePaused: () => Promise<void>;
  progress?: (message: string) => void;
}

export interface PrivateSnapshotResult {
  /** How long the source's vCPUs were stopped (QEMU's STOP event to the end of our `cont`). */
  pausedMs: number;
  /** The whole snapshot, first copy to the resume. */
  totalMs: number;
  /** Pages the VM had written since its restore (copied over the parent's). */
  dirtyPages: number;
  /** Pages of guest RAM. */
  pages: number;
}

export async function snapshotPrivateVm(request: PrivateSnapshotRequest): Promise<PrivateSnapshotResult> {
  const started = Date.now();
  const memoryPath = request.launch.memory?.path;
  if (!memoryPath || request.launch.memory?.share !== false) throw new ShoalError('this VM owns its memory file; it is snapshotted in place');
  const segments = guestRamMappings(request.pid, memoryPath, request.launch.spec.memoryMiB);

  request.progress?.('copying the parent snapshot\'s memory');
  const mapped = `/proc/${request.pid}/map_files/${segments[0]!.address.toString(16)}-${(segments[0]!.address + BigInt(segments[0]!.length)).toString(16)}`;
  await copySparse(mapped, request.files.memoryFile);

  request.progress?.('saving device state and the pages the VM changed');
  const target = fs.openSync(request.files.memoryFile, 'r+');
  try {
    // No fsync here: publishing the snapshot syncs its files (snapshot/store.ts, image-cache.ts),
    // and a sync of this size would hold the supervisor's event loop.
    const paused = await liveThenStopped(request, segments, target);
    return { ...paused, totalMs: Date.now() - started };
  } finally {
    fs.closeSync(target);
  }
}

/**
 * The VMM's mapping of its memory file: the one file it maps privately, from offset 0, exactly
 * as large as guest RAM (its other private file mappings are its libraries). Found by shape, not
 * by path: the file may have been unlinked (fork's snapshot, once its children run) or its
 * directory renamed since the VM mapped it.
 */
function guestRamMappings(pid: number, memoryPath: string, memoryMiB: number): MappingSegment[] {
  const bytes = memoryMiB * 1024 * 1024;
  const candidates = privateFileMappings(pid).filter((f) => f.bytes === bytes && f.segments[0]!.fileOffset === 0);
  if (candidates.length !== 1) {
    throw new ShoalError(`QEMU (pid ${pid}) does not map ${path.basename(memoryPath)} as its ${memoryMiB} MiB of RAM (${candidates.length} candidate mappings)`);
  }
  return candidates[0]!.segments;
}

/**
 * The device state by a live migration (its RAM pages dropped as they come), which stops the
 * vCPUs at its end; then, still stopped, the pages the VM changed; whilePaused; resume. The VM is
 * resumed whatever failed: it must keep running.
 *
 * The migration's RAM passes run while the guest runs, so the pause is only its last pass, the
 * device state, the changed pages and the disk. Their RAM is thrown away, so the pre-copy's dirty
 * tracking (unsound under TCG, see the file's comment) decides nothing: memory.raw is read from
 * the stopped VM. The pages are read only once the migration has completed: QEMU drains the
 * disks after it stops the vCPUs (do_vm_stop), and a read finishing then still writes guest RAM.
 */
async function liveThenStopped(request: PrivateSnapshotRequest, segments: MappingSegment[], target: number): Promise<Omit<PrivateSnapshotResult, 'totalMs'>> {
  const { qmp } = request;
  const socketPath = path.join(request.launch.spec.runDir, `snapshot-${crypto.randomBytes(3).toString('hex')}.sock`);
  let stoppedAt: number | undefined;
  const onEvent = (event: { event?: string }): void => {
    if (event.event === 'STOP' && stoppedAt === undefined) stoppedAt = Date.now();
  };
  qmp.on('event', onEvent);
  const receiver = await listenOnce(socketPath);
  let result: { dirtyPages: number; pages: number } | undefined;
  try {
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await qmp.execute('migrate-set-parameters', { 'max-bandwidth': MAX_BANDWIDTH, 'downtime-limit': DOWNTIME_LIMIT_MS });
    await qmp.execute('migrate', { uri: `unix:${socketPath}` });
    const deviceState = receiver.accepted.then((socket) => pipeline(socket, new RamPageFilter(GUEST_RAM_BLOCK, request.launch.spec.memoryMiB * 1024 * 1024), fs.createWriteStream(request.files.stateFile, { mode: 0o600 })));
    await Promise.all([
      deviceState.catch((err: Error) => { throw new ShoalError(`saving the device state failed: ${err.message}`); }),
      // A guest that dirties memory faster than the passes go would keep the migration
      // iterating: after LIVE_PHASE_MS its vCPUs are stopped, and it completes from there.
      waitForMigration(qmp, {
        what: 'saving the device state',
        intervalMs: 5,
        timeoutMs: MIGRATION_TIMEOUT_MS,
        onPoll: async (elapsed) => {
          if (elapsed > LIVE_PHASE_MS && stoppedAt === undefined) await qmp.execute('stop');
        },
      }),
    ]);
    request.progress?.('copying the pages the VM changed');
    result = await copyDirtyPages(request.pid, segments, target).catch((err: NodeJS.ErrnoException) => {
      throw new ShoalError(err.code === 'ENOSPC' ? `cannot copy to ${path.basename(request.files.memoryFile)}: No space left on device` : `copying the VM's changed pages failed: ${err.message}`);
    });
    await request.whilePaused();
  } catch (err) {
    await qmp.execute('migrate_cancel').catch(() => undefined);
    throw err;
  } finally {
    receiver.close();
    qmp.off('event', onEvent);
    const status = (await qmp.execute('query-status').catch(() => undefined)) as { status?: string } | undefined;
    if (status?.status !== 'running') await qmp.execute('cont').catch(() => undefined);
  }
  return { pausedMs: stoppedAt === undefined ? 0 : Date.now() - stoppedAt, ...result };
}

/** A Unix socket that takes QEMU's one migration connection. */
async function listenOnce(socketPath: string): Promise<{ accepted: Promise<net.Socket>; close(): void }> {
  const server = net.createServer();
  let socket: net.Socket | undefined;
  const accepted = new Promise<net.Socket>((resolve, reject) => {
    server.once('connection', (s) => {
      socket = s;
      server.close();
      resolve(s);
    });
    server.once('error', reject);
  });
  accepted.catch(() => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  fs.chmodSync(socketPath, 0o600);
  return {
    accepted,
    close: () => {
      server.close();
      socket?.destroy();
      fs.rmSync(socketPath, { force: true });
    },
  };
}
