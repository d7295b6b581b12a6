/**
 * Pause and resume for the native API (and so for MCP): pausing takes a memory + disk snapshot
 * of the sandbox, records what it needs to come back, and removes the VM, so a paused sandbox
 * holds no RAM and no CPU; resuming restores that snapshot as a VM of the same name, with its
 * processes, files and memory as they were, and its metadata and parent. The VM is a new one, so
 * the resumed sandbox has a new sandboxId; its name is the same, and every route takes either.
 *
 * Records live in <state>/api-paused/<name>.json (0600, atomic: src/state/record-dir.ts), so
 * paused sandboxes survive a `shoal serve` restart. A paused sandbox does not expire: it stays
 * until it is resumed or deleted. E2B's sandboxes pause through E2B's own API (their sandboxId is
 * their name there, kept in its own records): this one refuses them rather than hide them from it.
 * Published ports are not carried over (a clone takes no --publish through the API).
 */
import type { Core, VmView } from './core';
import { readE2bFacts } from './e2b/sandbox-facts';
import { ApiError } from './errors';
import { readFacts, writeFacts } from './facts';
import { field, RecordDir } from '../state/record-dir';
import { KeyedLock } from '../util/keyed-lock';

export interface PausedSandbox {
  name: string;
  /** The sandboxId it had when it was paused (its VM's id). */
  sandboxId: string;
  /** The snapshot it resumes from. */
  snapshotTag: string;
  image: string;
  cpus: number;
  memoryMiB: number;
  createdAt: string;
  pausedAt: string;
  metadata: Record<string, string>;
  parentId: string | null;
}

export const PAUSED_TAG_PREFIX = 'paused-';

export class PausedSandboxes {
  private readonly records: RecordDir<PausedSandbox>;
  private readonly lock = new KeyedLock();

  constructor(private readonly core: Core) {
    this.records = new RecordDir(core.recordsDir('api-paused'), parsePaused);
  }

  /** The paused sandbox by name or by the sandboxId it had (callers look for a VM first). */
  find(idOrName: string): PausedSandbox | undefined {
    return this.records.get(idOrName) ?? this.records.list().find((p) => p.sandboxId === idOrName);
  }

  list(): PausedSandbox[] {
    return this.records.list();
  }

  /** Whether a snapshot backs a paused sandbox (and so may not be deleted on its own). */
  backs(tag: string): boolean {
    return tag.startsWith(PAUSED_TAG_PREFIX) && this.records.get(tag.slice(PAUSED_TAG_PREFIX.length))?.snapshotTag === tag;
  }

  pause(vm: VmView): Promise<PausedSandbox> {
    return this.lock.run(vm.name, async () => {
      if (readE2bFacts(this.core.vmDir(vm.id))) throw new ApiError('conflict', `sandbox ${vm.name} is an E2B sandbox: pause it through E2B's API (/e2b)`);
      if (vm.status !== 'running') throw new ApiError('conflict', `sandbox ${vm.name} is ${vm.status}, not running: only a running sandbox can be paused`);
      if (!RecordDir.validKey(vm.name)) throw new ApiError('bad_request', `sandbox name ${JSON.stringify(vm.name)} cannot be paused (letters, digits, _ . - only)`);
      const tag = `${PAUSED_TAG_PREFIX}${vm.name}`;
      // A snapshot left by a pause that died before it recorded it (the VM still ran): replaced.
      if (this.core.snapshots().some((s) => s.tag === tag)) this.core.removeSnapshot(tag, { force: true });
      await this.core.snapshot(vm.id, tag);
      const facts = readFacts(this.core.vmDir(vm.id));
      const paused: PausedSandbox = {
        name: vm.name,
        sandboxId: vm.id,
        snapshotTag: tag,
        image: vm.image,
        cpus: vm.cpus,
        memoryMiB: vm.memoryMiB,
        createdAt: vm.createdAt,
        pausedAt: new Date().toISOString(),
        metadata: facts.metadata,
        parentId: facts.parentId,
      };
      // Recorded before the VM goes: a crash in between leaves both, and the VM wins lookups.
      this.records.put(vm.name, paused);
      await this.core.remove(vm.id);
      return paused;
    });
  }

  /** Restores it under its name; it expires `timeoutSec` from now, as a new sandbox would. */
  resume(paused: PausedSandbox, timeoutSec: number): Promise<VmView> {
    return this.lock.run(paused.name, async () => {
      const current = this.records.get(paused.name);
      if (!current) throw new ApiError('not_found', `no such paused sandbox: ${paused.name}`);
      const stale = this.core.find(current.name);
      if (stale && stale.name === current.name) {
        if (stale.status === 'running' || stale.status === 'starting' || stale.status === 'creating') throw new ApiError('conflict', `sandbox ${current.name} is already running`);
        await this.core.remove(stale.id);
      }
      const vm = await this.core.create({ name: current.name, snapshot: current.snapshotTag, cpus: current.cpus, memoryMiB: current.memoryMiB, env: {}, cmd: [], network: 'rootless', publish: [] });
      writeFacts(this.core.vmDir(vm.id), { metadata: current.metadata, expiresAt: new Date(Date.now() + timeoutSec * 1000).toISOString(), parentId: current.parentId });
      this.forgetNow(current);
      return vm;
    });
  }

  /** Deletes a paused sandbox: its record and its snapshot. */
  forget(paused: PausedSandbox): Promise<void> {
    return this.lock.run(paused.name, async () => this.forgetNow(paused));
  }

  private forgetNow(paused: PausedSandbox): void {
    this.records.remove(paused.name);
    // force: the resumed VM maps the snapshot's memory privately and keeps it alive by itself.
    if (this.core.snapshots().some((s) => s.tag === paused.snapshotTag)) this.core.removeSnapshot(paused.snapshotTag, { force: true });
  }
}

/** A stored record, checked field by field (it is read from disk: input like any other). */
function parsePaused(raw: string, name: string): PausedSandbox | undefined {
  let v: Partial<Record<keyof PausedSandbox, unknown>>;
  try {
    v = JSON.parse(raw) as typeof v;
  } catch {
    return undefined;
  }
  if (!v || typeof v !== 'object' || v.name !== name || typeof v.snapshotTag !== 'string' || v.snapshotTag !== `${PAUSED_TAG_PREFIX}${name}`) return undefined;
  return {
    name,
    sandboxId: typeof v.sandboxId === 'string' ? v.sandboxId : name,
    snapshotTag: v.snapshotTag,
    image: typeof v.image === 'string' ? v.image : '',
    cpus: field.positiveInt(v.cpus, 1),
    memoryMiB: field.positiveInt(v.memoryMiB, 512),
    createdAt: field.date(v.createdAt),
    pausedAt: field.date(v.pausedAt),
    metadata: field.stringMap(v.metadata),
    parentId: field.stringOrNull(v.parentId),
  };
}
