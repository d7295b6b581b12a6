/**
 * What the API adds to a VM: metadata, its expiry and its parent (for clones and forks), kept in
 * the VM's own directory (api.json, mode 0600), so it lives and dies with the VM and a restarted
 * `shoal serve` finds it again. A VM made by the CLI simply has none: no metadata, no expiry.
 */
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../state/atomic';

export interface ApiFacts {
  metadata: Record<string, string>;
  expiresAt: string | null;
  parentId: string | null;
}

const EMPTY: ApiFacts = { metadata: {}, expiresAt: null, parentId: null };

function factsPath(vmDir: string): string {
  return path.join(vmDir, 'api.json');
}

export function readFacts(vmDir: string): ApiFacts {
  try {
    const raw = fs.readFileSync(factsPath(vmDir), 'utf8');
    if (raw.length > 256 * 1024) return { ...EMPTY };
    const value = JSON.parse(raw) as Partial<ApiFacts>;
    const metadata: Record<string, string> = {};
    if (value.metadata && typeof value.metadata === 'object') {
      for (const [k, v] of Object.entries(value.metadata)) if (typeof v === 'string') metadata[k] = v;
    }
    return {
      metadata,
      expiresAt: typeof value.expiresAt === 'string' && !Number.isNaN(Date.parse(value.expiresAt)) ? value.expiresAt : null,
      parentId: typeof value.parentId === 'string' ? value.parentId : null,
    };
  } catch {
    return { ...EMPTY };
  }
}

/** Atomic, 0600 (metadata may be private); a VM directory that is gone is left alone. */
export function writeFacts(vmDir: string, facts: ApiFacts): void {
  if (!fs.existsSync(vmDir)) return;
  writeFileAtomic(factsPath(vmDir), `${JSON.stringify(facts)}\n`);
}
