/**
 * fork: one hidden snapshot of a running VM and N clones of it started concurrently. The
 * snapshot directory is removed once the children run (their private mappings keep its memory
 * alive). Two policies, one per front end's promise: all-or-nothing (`shoal fork`: a failing
 * child takes its siblings down) or each child on its own (the APIs: one entry per child).
 */
import fs from 'node:fs';
import type { PortForward } from '../vmm/backend';
import { startClone, waitUntilRunning } from '../snapshot/clone';
import { createSnapshot } from '../snapshot/create';
import type { StateStore } from '../state/store';
import type { VmRecord } from '../state/vm-record';
import { discardVm } from './remove';
import type { OnProgress } from './types';

export interface ForkChild {
  name: string;
  publish?: PortForward[];
}

export interface ForkOptions {
  /** One child failing kills and removes all (and the call rejects with its error). */
  allOrNothing?: boolean;
  onProgress?: OnProgress;
}

export interface ForkResult {
  children: Array<VmRecord | Error>;
  snapshotMs: number;
  pausedMs: number;
}

export async function forkVm(store: StateStore, source: VmRecord, children: ForkChild[], options: ForkOptions = {}): Promise<ForkResult> {
  const progress = (message: string): void => options.onProgress?.({ stage: 'fork', message });
  const started = Date.now();
  progress(`snapshotting ${source.config.name}`);
  const snapshot = await createSnapshot(store, source, `fork-${source.config.name}`, { hidden: true, progress });
  const snapshotMs = Date.now() - started;
  const records: Array<VmRecord | Error> = [];
  try {
    progress(`restoring ${children.length} clone${children.length === 1 ? '' : 's'}`);
    for (const child of children) {
      try {
        records.push(startClone(store, snapshot.dir, snapshot.manifest, { name: child.name, autoRemove: false, publish: child.publish ?? [] }));
      } catch (err) {
        if (options.allOrNothing) throw err;
        records.push(err as Error);
      }
    }
    const results = await Promise.all(records.map(async (child) => {
      if (child instanceof Error) return child;
      try {
        await waitUntilRunning(store, child);
        return store.read(child.id) ?? child;
      } catch (err) {
        if (!options.allOrNothing) await discardVm(store, child.id);
        return err as Error;
      }
    }));
    const failed = results.find((r): r is Error => r instanceof Error);
    if (options.allOrNothing && failed) throw failed;
    return { children: results, snapshotMs, pausedMs: snapshot.manifest.timings.pausedMs };
  } catch (err) {
    for (const child of records) if (!(child instanceof Error)) await discardVm(store, child.id);
    throw err;
  } finally {
    fs.rmSync(snapshot.dir, { recursive: true, force: true });
  }
}

