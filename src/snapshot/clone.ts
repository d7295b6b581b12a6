/**
 * Starting VMs from a snapshot: each clone is a normal VM (own id, name, record, supervisor,
 * scratch disk copy, sockets) whose supervisor finds restore.json in its directory and restores
 * instead of booting.
 */
import { checkNetworkSupport } from '../network/mode';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { connectSupervisor } from '../cli/control-client';
import { writeJsonAtomic } from '../state/atomic';
import type { StateStore } from '../state/store';
import { nameProblem, type VmRecord } from '../state/vm-record';
import { restoreInfoPath, vmFiles, type RestoreInfo } from '../supervisor/vm-files';
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
}

/** Claims the name, writes the record and restore.json, and starts the clone's supervisor. */
export function startClone(store: StateStore, snapshotDir: string, manifest: SnapshotManifest, request: CloneRequest): VmRecord {
  const problem = nameProblem(request.name);
  if (problem) throw new ShoalError(`invalid name: ${problem}`);
  // A bridged clone needs root as its source did.
  checkNetworkSupport(manifest.config.network ?? 'none', manifest.backend, request.publish ?? [], { jailer: manifest.config.jailer !== undefined });
  const id = store.newId();
  store.claimName(request.name, id);
  const record: VmRecord = {
    id,
    config: { ...manifest.config, name: request.name, detach: true, interactive: false, tty: undefined, autoRemove: request.autoRemove, publish: request.publish ?? [] },
    backend: manifest.backend,
    accel: manifest.accel,
    state: 'creating',
    createdAt: new Date().toISOString(),
  };
  if (manifest.loadedImage) record.loadedImage = manifest.loadedImage;
  try {
    store.write(record);
    const info: RestoreInfo = { snapshotDir, tag: manifest.tag };
    if (request.uffdSocket) info.uffdSocket = request.uffdSocket;
    writeJsonAtomic(restoreInfoPath(store.vmDir(id)), info);
    const files = vmFiles(store.vmDir(id));
    const log = fs.openSync(files.supervisorLog, 'a');
    const child = spawn(process.execPath, [path.join(__dirname, '..', 'supervisor', 'main.js'), id], {
      detached: true,
      stdio: ['ignore', log, log],
      env: { ...process.env, SHOAL_STATE_DIR: store.root },
    });
    fs.closeSync(log);
    child.unref();
  } catch (err) {
    store.remove(record);
    throw err;
  }
  return record;
}

/** Resolves once the clone runs; rejects with its error. */
export async function waitUntilRunning(store: StateStore, record: VmRecord, progress?: (m: string) => void): Promise<void> {
  const mux = await connectSupervisor(store, record, 60_000);
  try {
    await new Promise<void>((resolve, reject) => {
      const channel = mux.open({ kind: 'attach', stdio: false });
      channel.setDataHandler(() => undefined);
      let done = false;
      channel.on('message', (message: Record<string, unknown>) => {
        if (message.type === 'progress') progress?.(String(message.message));
        else if ((message.type === 'running' || message.type === 'exit') && !done) {
          done = true;
          resolve();
        } else if (message.type === 'error' && !done) {
          done = true;
          reject(new ShoalError(`${record.config.name}: ${String(message.message)}`));
        }
      });
      channel.on('close', () => {
        if (!done) reject(new ShoalError(`the supervisor of ${record.config.name} went away before it was running`));
      });
    });
  } finally {
    mux.destroy();
  }
}
