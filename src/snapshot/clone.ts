/**
 * Starting VMs from a snapshot: each clone is a normal VM (own id, name, record, supervisor,
 * scratch disk copy, sockets) whose supervisor finds restore.json in its directory and restores
 * instead of booting.
 */
import { checkNetworkSupport } from '../network/mode';
import { SupervisorClient } from '../control/client';
import { startSupervisor } from '../lifecycle/spawn';
import { writeJsonAtomic } from '../state/atomic';
import type { StateStore } from '../state/store';
import { nameProblem, type VmRecord } from '../state/vm-record';
import { restoreInfoPath, type RestoreInfo } from '../state/vm-files';
import { ShoalError } from '../util/errors';
import type { PortForward } from '../vmm/backend';
import type { SnapshotManifest } from './store';

export interface CloneRequest {
  name: string;
  autoRemove: boolean;
  /** The clone's own published ports (the source's stay with the source). */
  publish?: PortForward[];
  /** Firecracker: restore memory through this `snapshot serve` socket (Uffd backend) instead of the file. */
  uffdSocket?: string;
  /**
   * A snapshot of a VM on `--network ns:PATH`: the clone's own namespace (a pod's), whose
   * interface's address it takes. Required for such snapshots: two VMs cannot share one.
   */
  netnsPath?: string;
}

/** Claims the name, writes the record and restore.json, and starts the clone's supervisor. */
export function startClone(store: StateStore, snapshotDir: string, manifest: SnapshotManifest, request: CloneRequest): VmRecord {
  const problem = nameProblem(request.name);
  if (problem) throw new ShoalError(`invalid name: ${problem}`);
  // A bridged clone needs root as its source did.
  checkNetworkSupport(manifest.config.network ?? 'none', manifest.backend, request.publish ?? [], { jailer: manifest.config.jailer !== undefined });
  if (manifest.config.network === 'ns' && request.netnsPath === undefined) {
    throw new ShoalError(`snapshot ${manifest.tag} is of a VM in a network namespace (${manifest.config.netnsPath ?? '?'}): its clones need one of their own, and this one was given none`);
  }
  if (manifest.config.network !== 'ns' && request.netnsPath !== undefined) {
    throw new ShoalError(`snapshot ${manifest.tag} has no namespace network: a clone of it cannot join ${request.netnsPath}`);
  }
  const id = store.newId();
  store.claimName(request.name, id);
  const record: VmRecord = {
    id,
    config: { ...manifest.config, name: request.name, detach: true, interactive: false, tty: undefined, autoRemove: request.autoRemove, publish: request.publish ?? [], ...(request.netnsPath !== undefined ? { netnsPath: request.netnsPath } : {}) },
    backend: manifest.backend,
    accel: manifest.accel,
    state: 'creating',
    createdAt: new Date().toISOString(),
    restoredFrom: { tag: manifest.tag, ...(manifest.id ? { id: manifest.id } : {}) },
  };
  if (manifest.loadedImage) record.loadedImage = manifest.loadedImage;
  try {
    store.write(record);
    const info: RestoreInfo = { snapshotDir, tag: manifest.tag };
    if (request.uffdSocket) info.uffdSocket = request.uffdSocket;
    writeJsonAtomic(restoreInfoPath(store.vmDir(id)), info);
    startSupervisor(store, id);
  } catch (err) {
    store.remove(record);
    throw err;
  }
  return record;
}

/** Resolves once the clone runs; rejects with its error. */
export async function waitUntilRunning(store: StateStore, record: VmRecord, progress?: (m: string) => void): Promise<void> {
  const client = await SupervisorClient.connect(store, record, 60_000);
  try {
    const result = await client.waitUntilRunning(progress);
    if (result.outcome === 'error') throw new ShoalError(`${record.config.name}: ${result.message}`);
    if (result.outcome === 'lost') throw new ShoalError(`the supervisor of ${record.config.name} went away before it was running`);
  } finally {
    client.close();
  }
}
