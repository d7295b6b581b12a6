/**
 * The CLI side of taking a snapshot: a temp directory, the supervisor's 'snapshot' request
 * (quiesce, pause, state + memory + disk, resume), then the manifest, written last, and the
 * rename into place. Killed midway, it leaves only a .tmp-* directory that no reader takes for
 * a snapshot and that the next listing sweeps.
 */
import fs from 'node:fs';
import path from 'node:path';
import { SupervisorClient } from '../control/client';
import type { SnapshotResult } from '../control/messages';
import { statusOf } from '../state/store';
import type { StateStore } from '../state/store';
import type { VmRecord } from '../state/vm-record';
import { ShoalError } from '../util/errors';
import { vmmTraits } from '../vmm/traits';
import { buildManifest, makeTempDir, MANIFEST, publish, snapshotsDir, type SnapshotManifest } from './store';

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
  if (record.config.jailer && !vmmTraits(record.backend).jailedSnapshots) throw new ShoalError('snapshots of Firecracker VMs under --jailer are not supported yet');
  if (!options.hidden && fs.existsSync(path.join(snapshotsDir(store), tag))) throw new ShoalError(`snapshot ${tag} already exists`);
  const started = Date.now();
  const temp = makeTempDir(store, tag, options.hidden ? 'fork' : 'tmp');
  try {
    const client = await SupervisorClient.connect(store, record, 10_000);
    let result: SnapshotResult;
    try {
      result = await client.snapshot(temp, options.progress);
    } finally {
      client.close();
    }
    const manifest = buildManifest(
      temp,
      {
        tag,
        source: { id: record.id, name: record.config.name },
        backend: record.backend,
        accel: record.accel,
        config: result.config,
        vmSpec: result.vmSpec,
        loadedImage: result.loadedImage,
        parent: result.parent,
        timings: { pausedMs: result.timings.pausedMs, totalMs: Date.now() - started },
      },
      { measure: true },
    );
    if (options.hidden) {
      // fork's snapshot stays under its temp name (a dot-entry): complete, but never listed.
      fs.writeFileSync(path.join(temp, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`);
      return { dir: temp, manifest };
    }
    return { dir: publish(store, temp, manifest), manifest };
  } catch (err) {
    fs.rmSync(temp, { recursive: true, force: true });
    throw err;
  }
}
