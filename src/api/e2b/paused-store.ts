/**
 * Paused E2B sandboxes: a paused sandbox has no VM (and so no VM directory for its e2b.json and
 * api.json), only a snapshot. What it needs to come back as the same sandbox is kept here, one
 * file per sandbox under shoal's state directory (<state>/e2b/paused/<sandboxId>.json, 0600,
 * written atomically), so paused sandboxes survive a `shoal serve` restart.
 */
import fs from 'node:fs';
import path from 'node:path';
import { e2bFactsFrom, type E2bFacts } from './sandbox-facts';
import { writeJsonAtomic } from '../../state/atomic';
import { ensurePrivateDir } from '../../util/private-fs';

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

/** Sandbox ids the store accepts as file names (those the API makes, and VM names in general). */
const ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
const MAX_BYTES = 256 * 1024;

export class PausedStore {
  private readonly dir: string;

  constructor(stateDir: string) {
    this.dir = path.join(stateDir, 'paused');
  }

  private file(sandboxId: string): string | undefined {
    return ID.test(sandboxId) ? path.join(this.dir, `${sandboxId}.json`) : undefined;
  }

  get(sandboxId: string): PausedSandbox | undefined {
    const file = this.file(sandboxId);
    if (!file) return undefined;
    let raw: string;
    try {
      const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      try {
        if (fs.fstatSync(fd).size > MAX_BYTES) return undefined;
        raw = fs.readFileSync(fd, 'utf8');
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      return undefined;
    }
    return parsePaused(raw, sandboxId);
  }

  list(): PausedSandbox[] {
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch {
      return [];
    }
    const out: PausedSandbox[] = [];
    for (const name of names) {
      if (!name.endsWith('.json') || name.startsWith('.')) continue;
      const paused = this.get(name.slice(0, -5));
      if (paused) out.push(paused);
    }
    return out;
  }

  put(paused: PausedSandbox): void {
    const file = this.file(paused.facts.sandboxId);
    if (!file) throw new Error(`unusable sandbox id ${paused.facts.sandboxId}`);
    ensurePrivateDir(this.dir);
    writeJsonAtomic(file, paused);
  }

  remove(sandboxId: string): void {
    const file = this.file(sandboxId);
    if (file) fs.rmSync(file, { force: true });
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
