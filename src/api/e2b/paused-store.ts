/**
 * Paused E2B sandboxes: a paused sandbox has no VM (and so no VM directory for its e2b.json and
 * api.json), only a snapshot. What it needs to come back as the same sandbox is kept here, one
 * file per sandbox under shoal's state directory (<state>/e2b/paused/<sandboxId>.json, 0600,
 * written atomically), so paused sandboxes survive a `shoal serve` restart.
 */
import path from 'node:path';
import { e2bFactsFrom, type E2bFacts } from './sandbox-facts';
import { field, RecordDir } from '../../state/record-dir';

export interface PausedSandbox {
  facts: E2bFacts;
  metadata: Record<string, string>;
  /** The snapshot (memory + disk) it resumes from. */
  snapshotTag: string;
  cpus: number;
  memoryMiB: number;
  startedAt: string;
  pausedAt: string;
  parentId: string | null;
}

export class PausedStore {
  private readonly records: RecordDir<PausedSandbox>;

  constructor(stateDir: string) {
    this.records = new RecordDir(path.join(stateDir, 'paused'), parsePaused);
  }

  get(sandboxId: string): PausedSandbox | undefined {
    return this.records.get(sandboxId);
  }

  list(): PausedSandbox[] {
    return this.records.list();
  }

  put(paused: PausedSandbox): void {
    if (!RecordDir.validKey(paused.facts.sandboxId)) throw new Error(`unusable sandbox id ${paused.facts.sandboxId}`);
    this.records.put(paused.facts.sandboxId, paused);
  }

  remove(sandboxId: string): void {
    this.records.remove(sandboxId);
  }
}

/** A stored record, checked field by field (the facts through sandbox-facts' own reader). */
function parsePaused(raw: string, sandboxId: string): PausedSandbox | undefined {
  let v: Partial<PausedSandbox>;
  try {
    v = JSON.parse(raw) as Partial<PausedSandbox>;
  } catch {
    return undefined;
  }
  if (!v || typeof v !== 'object' || typeof v.snapshotTag !== 'string') return undefined;
  const facts = e2bFactsFrom(v.facts);
  if (!facts || facts.sandboxId !== sandboxId) return undefined;
  return {
    facts,
    metadata: field.stringMap(v.metadata),
    snapshotTag: v.snapshotTag,
    cpus: field.positiveInt(v.cpus, 1),
    memoryMiB: field.positiveInt(v.memoryMiB, 512),
    startedAt: field.date(v.startedAt),
    pausedAt: field.date(v.pausedAt),
    parentId: field.stringOrNull(v.parentId),
  };
}
