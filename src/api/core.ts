/**
 * The API's one door to shoal's core: every route and MCP tool goes through this interface.
 * ShoalCore implements it as a thin adapter over the in-process core (src/core), the same code
 * the CLI runs: so a VM made by the CLI is seen here and the reverse, nothing spawns the CLI,
 * and unit tests can hand the server a fake core that needs no VM. What the adapter adds is
 * the API's shape: its SandboxSpec, and the core's errors as ApiErrors (404, 409).
 */
import path from 'node:path';
import { ConflictError, InvalidSpecError, NotFoundError, VmCore, viewOf, type CreateOptions, type FileOps, type ForkChild, type KeptProcessInfo, type OnProgress, type RemoteProcess, type SnapshotView, type VmView, type ExecSpec } from '../core';
import { StateStore } from '../state/store';
import type { VmRecord } from '../state/vm-record';
import { ApiError } from './errors';

export type { ExecSpec, FileOps, KeptProcessInfo, OnProgress, ProcessEnd, ProgressEvent, RemoteProcess, SnapshotView, VmView } from '../core';

export interface SandboxSpec {
  name: string;
  image?: string;
  snapshot?: string;
  cpus: number;
  memoryMiB: number;
  env: Record<string, string>;
  /** The container's command; the API supplies an idle one when the user gave none. */
  cmd: string[];
  network: string;
  publish: string[];
}

export type { LogRecord } from './log-reader';

export interface Core {
  /** Resolves once the sandbox runs; onProgress hears the boot's steps meanwhile. */
  create(spec: SandboxSpec, onProgress?: OnProgress): Promise<VmView>;
  list(): VmView[];
  find(idOrName: string): VmView | undefined;
  /** Kills and removes the VM (as `shoal rm -f`). */
  remove(id: string): Promise<void>;
  exec(id: string, spec: ExecSpec): Promise<RemoteProcess>;
  /** The guest agent's kept processes (ExecSpec.keep): what outlives this server and a pause. */
  keptProcesses(id: string): Promise<KeptProcessInfo[]>;
  /** Follows a kept process (its recent output first). */
  attachKept(id: string, keptId: number): Promise<RemoteProcess>;
  /** The path of the sandbox's container log (read with log-reader.ts: its bytes are the guest's). */
  logFile(id: string): string;
  snapshot(id: string, tag: string): Promise<{ tag: string; pauseMs: number }>;
  snapshots(): SnapshotView[];
  removeSnapshot(tag: string, options?: { force?: boolean }): void;
  /** Snapshots the VM and starts `names.length` clones; one entry per child. */
  fork(id: string, names: string[]): Promise<Array<VmView | Error>>;
  readonly files: FileOps;
  /** A directory that lives exactly as long as the VM (the API keeps its own facts there). */
  vmDir(id: string): string;
  /**
   * A directory under shoal's state directory that outlives VMs, for a front end's records of
   * what has no VM (paused sandboxes); `name` is the front end's own ([a-z0-9-]+). Not created here.
   */
  recordsDir(name: string): string;
}

export class ShoalCore implements Core {
  readonly core: VmCore;
  readonly files: FileOps;

  constructor(readonly store: StateStore = new StateStore()) {
    this.core = new VmCore(store);
    const files = this.core.files;
    // The files' lookups throw the core's errors too: translated as every other call's.
    this.files = {
      read: (id, p, max) => api(() => files.read(id, p, max)),
      write: (id, p, body, max) => api(() => files.write(id, p, body, max)),
      list: (id, p) => api(() => files.list(id, p)),
      stat: (id, p) => api(() => files.stat(id, p)),
      mkdir: (id, p) => api(() => files.mkdir(id, p)),
      rename: (id, from, to) => api(() => files.rename(id, from, to)),
      remove: (id, p) => api(() => files.remove(id, p)),
      watch: (id, p, recursive, handlers) => api(() => files.watch(id, p, recursive, handlers)),
    };
  }

  vmDir(id: string): string {
    return this.core.vmDir(id);
  }

  recordsDir(name: string): string {
    if (!/^[a-z0-9-]+$/.test(name)) throw new Error(`bad records directory name ${name}`);
    return path.join(this.store.root, name);
  }

  list(): VmView[] {
    return this.core.list();
  }

  find(idOrName: string): VmView | undefined {
    return this.core.find(idOrName);
  }

  create(spec: SandboxSpec, onProgress?: OnProgress): Promise<VmView> {
    const options: CreateOptions = onProgress ? { onProgress } : {};
    if (spec.snapshot !== undefined) return api(() => this.core.create({ snapshot: spec.snapshot!, name: spec.name, publish: spec.publish }, options));
    return api(() => this.core.create({
      image: spec.image!,
      name: spec.name,
      cpus: spec.cpus,
      memoryMiB: spec.memoryMiB,
      env: spec.env,
      cmd: spec.cmd,
      network: spec.network,
      publish: spec.publish,
    }, options));
  }

  remove(id: string): Promise<void> {
    return api(() => this.core.remove(id));
  }

  exec(id: string, spec: ExecSpec): Promise<RemoteProcess> {
    return api(() => this.core.exec(id, spec));
  }

  keptProcesses(id: string): Promise<KeptProcessInfo[]> {
    return api(() => this.core.keptProcesses(id));
  }

  attachKept(id: string, keptId: number): Promise<RemoteProcess> {
    return api(() => this.core.attachKept(id, keptId));
  }

  logFile(id: string): string {
    return apiSync(() => this.core.logFile(id));
  }

  async snapshot(id: string, tag: string): Promise<{ tag: string; pauseMs: number }> {
    const { pauseMs } = await api(() => this.core.snapshot(id, tag));
    return { tag, pauseMs };
  }

  snapshots(): SnapshotView[] {
    return this.core.snapshots();
  }

  /** force (the E2B API): also when live clones map its memory (their mappings keep it until they end). */
  removeSnapshot(tag: string, options: { force?: boolean } = {}): void {
    apiSync(() => this.core.removeSnapshot(tag, options.force === true));
  }

  /** As `shoal fork`, except that one child failing does not take its siblings down. */
  async fork(id: string, names: string[]): Promise<Array<VmView | Error>> {
    const children: ForkChild[] = names.map((name) => ({ name }));
    const result = await api(() => this.core.fork(id, children));
    return result.children.map((child) => (child instanceof Error ? child : viewOf(child)));
  }

  record(id: string): VmRecord {
    return apiSync(() => this.core.record(id));
  }

  runningRecord(id: string): VmRecord {
    return apiSync(() => this.core.runningRecord(id));
  }
}

/** The core's NotFoundError, ConflictError and InvalidSpecError as the API's; anything else as it was. */
function translate(err: unknown): unknown {
  if (err instanceof NotFoundError) return new ApiError('not_found', err.message.replace(/^no such VM:/, 'no such sandbox:'));
  if (err instanceof ConflictError) return new ApiError('conflict', err.message.replace(/^VM /, 'sandbox '));
  if (err instanceof InvalidSpecError) return new ApiError('bad_request', err.message);
  return err;
}

async function api<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw translate(err);
  }
}

function apiSync<T>(call: () => T): T {
  try {
    return call();
  } catch (err) {
    throw translate(err);
  }
}
