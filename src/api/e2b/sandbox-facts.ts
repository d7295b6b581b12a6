/**
 * What E2B's API adds to a sandbox, kept beside the native API's facts in the VM's own directory
 * (e2b.json, mode 0600, written atomically), so it lives and dies with the VM and a restarted
 * `shoal serve` finds it again. An E2B sandbox's id is the shoal VM's name. A VM made by the CLI
 * or the native API has none, and so no envd access token: envd calls to it are refused.
 *
 * Both halves of the E2B surface read this: the sandbox API (which writes it at create, connect
 * and resume) and envd (which checks `envdAccessToken` on every call).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { writeFileAtomic } from '../../state/atomic';

export interface E2bFacts {
  sandboxId: string;
  templateId: string;
  /** Sent by the SDK as X-Access-Token on every envd call. */
  envdAccessToken: string;
  /** `secure: true` sandboxes: getHost traffic must carry this as e2b-traffic-access-token. */
  trafficAccessToken: string | null;
  secure: boolean;
  autoPause: boolean;
  /** The E2B user the SDK names when it gives none ("user"). */
  defaultUser: string;
  /** create's envVars: the environment of every process envd starts (as E2B's envd applies them). */
  envVars: Record<string, string>;
}

const MAX_FACTS_BYTES = 64 * 1024;
const TOKEN = /^[A-Za-z0-9_-]{16,128}$/;

function factsPath(vmDir: string): string {
  return path.join(vmDir, 'e2b.json');
}

/** A fresh random token (URL-safe). */
export function newAccessToken(): string {
  return crypto.randomBytes(24).toString('base64url');
}

/** The facts, or undefined if there are none or they are malformed (then the sandbox is not E2B's). */
export function readE2bFacts(vmDir: string): E2bFacts | undefined {
  let raw: string;
  try {
    raw = fs.readFileSync(factsPath(vmDir), 'utf8');
  } catch {
    return undefined;
  }
  if (raw.length > MAX_FACTS_BYTES) return undefined;
  try {
    return e2bFactsFrom(JSON.parse(raw));
  } catch {
    return undefined;
  }
}

/** Parsed facts checked field by field (also for the paused-sandbox store, which holds them without a VM). */
export function e2bFactsFrom(value: unknown): E2bFacts | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const v = value as Partial<E2bFacts>;
  if (typeof v.sandboxId !== 'string' || typeof v.templateId !== 'string') return undefined;
  if (typeof v.envdAccessToken !== 'string' || !TOKEN.test(v.envdAccessToken)) return undefined;
  const traffic = typeof v.trafficAccessToken === 'string' && TOKEN.test(v.trafficAccessToken) ? v.trafficAccessToken : null;
  const envVars: Record<string, string> = {};
  if (v.envVars && typeof v.envVars === 'object') {
    for (const [k, value] of Object.entries(v.envVars)) if (typeof value === 'string') envVars[k] = value;
  }
  return {
    sandboxId: v.sandboxId,
    templateId: v.templateId,
    envdAccessToken: v.envdAccessToken,
    trafficAccessToken: traffic,
    secure: v.secure === true,
    autoPause: v.autoPause === true,
    defaultUser: typeof v.defaultUser === 'string' ? v.defaultUser : 'user',
    envVars,
  };
}

/** Atomic, 0600; a VM directory that is gone is left alone. */
export function writeE2bFacts(vmDir: string, facts: E2bFacts): void {
  if (!fs.existsSync(vmDir)) return;
  writeFileAtomic(factsPath(vmDir), `${JSON.stringify(facts)}\n`);
}

/** Timing-safe comparison of a presented token against the expected one. */
export function tokenMatches(presented: string | undefined, expected: string): boolean {
  if (presented === undefined) return false;
  const a = Buffer.from(presented);
  const b = Buffer.from(expected);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}
