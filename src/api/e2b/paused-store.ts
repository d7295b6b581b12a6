/**
 * Paused E2B sandboxes: a paused sandbox has no VM (and so no VM directory for its e2b.json and
 * api.json), only a snapshot. What it needs to come back as the same sandbox is kept here, one
 * file per sandbox under shoal's state directory (<state>/e2b/paused/<sandboxId>.json, 0600,
 * written atomically), so paused sandboxes survive a `shoal serve` restart.
 */
import path from 'node:path';
import { e2bFactsFrom, type E2bFacts } from './sandbox-facts';
import { RecordDir } from '../../state/record-dir';

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
  const metadata: Record<string, string> = {};
  if (v.metadata && typeof v.metadata === 'object') {
    for (const [k, value] of Object.entries(v.metadata)) if (typeof value === 'string') metadata[k] = value;
  }
  const int = (n: unknown, fallback: number): number => (typeof n === 'number' && Number.isInteger(n) && n > 0 ? n : fallback);
  const date = (s: unknown): string => (typeof s === 'string' && !Number.isNaN(Date.parse(s)) ? s : new Date(0).toISOString());
  return {
    facts,
    metadata,
    snapshotTag: v.snapshotTag,
    cpus: int(v.cpus, 1),
    memoryMiB: int(v.memoryMiB, 512),
    startedAt: date(v.startedAt),
    pausedAt: date(v.pausedAt),
    parentId: typeof v.parentId === 'string' ? v.parentId : null,
  };
}
