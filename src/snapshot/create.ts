/**
 * The CLI side of taking a snapshot: a temp directory, the supervisor's 'snapshot' request
 * (quiesce, pause, state + memory + disk, resume), then the manifest, written last, and the
 * rename into place. Killed midway, it leaves only a .tmp-* directory that no reader takes for
 * a snapshot and that the next listing sweeps.
 */
import fs from 'node:fs';
import path from 'node:path';
import { connectSupervisor } from '../cli/control-client';
import { statusOf } from '../state/store';
import type { StateStore } from '../state/store';
import type { VmConfig, VmRecord } from '../state/vm-record';
import { ShoalError } from '../util/errors';
import type { VmSpec } from '../vmm/backend';
import { allocatedBytes, makeTempDir, publish, snapshotFiles, snapshotsDir, type SnapshotManifest } from './store';

export interface CreateOptions {
  /** fork's private snapshot: kept in a .fork-* directory, never listed. */
  hidden?: boolean;
  progress?: (message: string) => void;
}

export interface CreatedSnapshot {
  dir: string;
  manifest: SnapshotManifest;
}

export async function createSnapshot(store: StateStore, record: VmRecord, tag: string, options: CreateOptions = {}): Promise<CreatedSnapshot> {
  if (statusOf(record) !== 'running') throw new ShoalError(`VM ${record.config.name} is not running (${statusOf(record)})`);
  // A jailed Firecracker writes its snapshot inside its chroot, which shoal does not collect yet.
  if (record.backend === 'firecracker' && record.config.jailer) throw new ShoalError('snapshots of Firecracker VMs under --jailer are not supported yet');
  if (!options.hidden && fs.existsSync(path.join(snapshotsDir(store), tag))) throw new ShoalError(`snapshot ${tag} already exists`);
  const started = Date.now();
  const temp = makeTempDir(store, tag, options.hidden ? 'fork' : 'tmp');
  try {
    const result = await requestSnapshot(store, record, temp, options.progress);
    const files = snapshotFiles(temp);
    const manifest: SnapshotManifest = {
      version: 1,
      tag,
      createdAt: new Date().toISOString(),
      source: { id: record.id, name: record.config.name },
      backend: record.backend,
      accel: record.accel,
      config: result.config,
      vmSpec: result.vmSpec,
      files: { state: 'state.bin', memory: 'memory.raw', scratch: 'scratch.img' },
      bytes: { state: allocatedBytes(files.state), memory: allocatedBytes(files.memory), scratch: allocatedBytes(files.scratch) },
      timings: { pausedMs: result.timings.pausedMs, totalMs: Date.now() - started },
    };
    if (result.loadedImage) manifest.loadedImage = result.loadedImage;
    if (options.hidden) {
      // fork's snapshot stays under its temp name (a dot-entry): complete, but never listed.
      fs.writeFileSync(path.join(temp, 'snapshot.json'), `${JSON.stringify(manifest, null, 2)}\n`);
      return { dir: temp, manifest };
    }
    return { dir: publish(store, temp, manifest), manifest };
  } catch (err) {
    fs.rmSync(temp, { recursive: true, force: true });
    throw err;
  }
}

interface SnapshotResult {
  vmSpec: VmSpec;
  config: VmConfig;
  loadedImage: string | null;
  timings: { pausedMs: number; totalMs: number };
}

async function requestSnapshot(store: StateStore, record: VmRecord, dir: string, progress?: (m: string) => void): Promise<SnapshotResult> {
  const mux = await connectSupervisor(store, record, 10_000);
  try {
    return await new Promise<SnapshotResult>((resolve, reject) => {
      const channel = mux.open({ kind: 'snapshot', dir });
      channel.setDataHandler(() => undefined);
      let result: SnapshotResult | undefined;
      let error: string | undefined;
      channel.on('message', (message: Record<string, unknown>) => {
        if (message.type === 'progress') progress?.(String(message.message));
        else if (message.type === 'result') result = message as unknown as SnapshotResult;
        else if (message.type === 'error') error = String(message.message);
      });
      channel.on('close', () => {
        channel.close();
        if (result) resolve(result);
        else reject(new ShoalError(error ?? `lost the supervisor of ${record.config.name} during the snapshot`));
      });
    });
  } finally {
    mux.destroy();
  }
}
