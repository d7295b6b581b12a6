/**
 * shoal's one in-process core: create, exec, snapshot, fork, remove, list/find and stop, over
 * the state store, for every front end (the CLI, `shoal serve`'s native and E2B APIs, `shoal
 * mcp`, the containerd shim). Each front end only translates its own inputs and outputs; the
 * rules live here and below (validation in create.ts, snapshots in src/snapshot, supervisors
 * through src/lifecycle and src/control). Nothing here spawns the CLI.
 */
import { stopVm } from '../lifecycle/stop';
import { createSnapshot } from '../snapshot/create';
import { findSnapshot, listSnapshots, removeSnapshot, type SnapshotManifest } from '../snapshot/store';
import { StateStore, statusOf } from '../state/store';
import type { VmRecord } from '../state/vm-record';
import { vmFiles } from '../state/vm-files';
import { createVm, type CreateOptions } from './create';
import { ConflictError, NotFoundError } from './errors';
import { attachKept, execVm, keptProcesses } from './exec';
import { AgentFiles, type FileOps } from './files';
import { forkVm, type ForkChild, type ForkOptions, type ForkResult } from './fork';
import { removeVm } from './remove';
import type { CreateSpec, ExecSpec, KeptProcessInfo, OnProgress, RemoteProcess, SnapshotView, VmView } from './types';

export class VmCore {
  readonly files: FileOps;

  constructor(readonly store: StateStore = new StateStore()) {
    this.files = new AgentFiles(store, (id) => this.runningRecord(id));
  }

  list(): VmView[] {
    return this.store.list().map(viewOf);
  }

  find(idOrName: string): VmView | undefined {
    const record = this.store.find(idOrName);
    return record ? viewOf(record) : undefined;
  }

  /** The VM's record, or NotFoundError. */
  record(idOrName: string): VmRecord {
    const record = this.store.find(idOrName);
    if (!record) throw new NotFoundError(`no such VM: ${idOrName}`);
    return record;
  }

  /** The VM's record if it runs, else NotFoundError or ConflictError. */
  runningRecord(idOrName: string): VmRecord {
    const record = this.record(idOrName);
    const status = statusOf(record);
    if (status !== 'running') throw new ConflictError(`VM ${record.config.name} is ${status}, not running`);
    return record;
  }

  async create(spec: CreateSpec, options: CreateOptions = {}): Promise<VmView> {
    return viewOf(await createVm(this.store, spec, options));
  }

  async exec(idOrName: string, spec: ExecSpec): Promise<RemoteProcess> {
    return execVm(this.store, this.runningRecord(idOrName), spec);
  }

  /** The guest agent's kept processes (ExecSpec.keep), running and recently ended. */
  async keptProcesses(idOrName: string): Promise<KeptProcessInfo[]> {
    return keptProcesses(this.store, this.runningRecord(idOrName));
  }

  /** Follows a kept process of the VM (its recent output first). */
  async attachKept(idOrName: string, keptId: number): Promise<RemoteProcess> {
    return attachKept(this.store, this.runningRecord(idOrName), keptId);
  }

  /** Kills and removes the VM (as `shoal rm -f`). */
  async remove(idOrName: string): Promise<void> {
    await removeVm(this.store, this.record(idOrName));
  }

  /** Graceful stop: the container gets timeoutSeconds between SIGTERM and SIGKILL. */
  async stop(idOrName: string, timeoutSeconds?: number): Promise<void> {
    await stopVm(this.store, this.record(idOrName), timeoutSeconds);
  }

  /** The path of the VM's container log (its bytes are the guest's). */
  logFile(idOrName: string): string {
    return vmFiles(this.store.vmDir(this.record(idOrName).id)).containerLog;
  }

  /** A directory that lives exactly as long as the VM. */
  vmDir(id: string): string {
    return this.store.vmDir(id);
  }

  async snapshot(idOrName: string, tag: string, onProgress?: OnProgress): Promise<{ tag: string; pauseMs: number; manifest: SnapshotManifest }> {
    const progress = onProgress ? (message: string): void => onProgress({ stage: 'snapshot', message }) : undefined;
    const { manifest } = await createSnapshot(this.store, this.runningRecord(idOrName), tag, progress ? { progress } : {});
    return { tag, pauseMs: manifest.timings.pausedMs, manifest };
  }

  snapshots(): SnapshotView[] {
    return listSnapshots(this.store).map(({ tag, manifest }) => ({ tag, parent: manifest.source.id, createdAt: manifest.createdAt, image: manifest.config.image }));
  }

  /** Refused while live clones map its memory, unless force. */
  removeSnapshot(tag: string, force = false): void {
    try {
      findSnapshot(this.store, tag);
    } catch (err) {
      throw new NotFoundError((err as Error).message);
    }
    removeSnapshot(this.store, tag, { force });
  }

  async fork(idOrName: string, children: ForkChild[], options: ForkOptions = {}): Promise<ForkResult> {
    return forkVm(this.store, this.runningRecord(idOrName), children, options);
  }
}

export function viewOf(record: VmRecord): VmView {
  return {
    id: record.id,
    name: record.config.name,
    status: statusOf(record),
    image: record.config.image,
    cpus: record.config.cpus,
    memoryMiB: record.config.memoryMiB,
    createdAt: record.createdAt,
  };
}
