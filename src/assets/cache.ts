/**
 * Content-hash cache for guest assets.
 *
 * An asset is a folder `<root>/<name>-<hash16>/`. It is built in a temporary
 * sibling (`<root>/.tmp-<name>-<hash16>-<pid>-<rand>/`) and renamed into place
 * only when complete, so a folder with the final name is always complete and
 * a killed build leaves only a temp folder that nobody reads (and that a later
 * build sweeps). A per-asset O_EXCL lock file holding the owner's pid and
 * process start time keeps two concurrent setups from building the same asset;
 * a lock whose owner is gone is stale and taken over.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { cacheDir } from '../util/paths';
import { ShoalError } from '../util/errors';
import { isAlive, processStartTime } from '../util/process';

/** sha256 over the parts (each length-prefixed, so boundaries matter), first 16 hex chars. */
export function hashParts(parts: ReadonlyArray<string | Buffer>): string {
  const h = crypto.createHash('sha256');
  for (const p of parts) {
    const b = typeof p === 'string' ? Buffer.from(p, 'utf8') : p;
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(b.length));
    h.update(len);
    h.update(b);
  }
  return h.digest('hex').slice(0, 16);
}

/** Stable JSON (object keys sorted) so hashes don't depend on key order. */
export function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .filter((k) => o[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${stableJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

export function assetDir(name: string, hash: string, root: string = cacheDir()): string {
  return path.join(root, `${name}-${hash}`);
}

/** True when the asset's final folder exists (it only ever appears complete). */
export function isBuilt(name: string, hash: string, root: string = cacheDir()): boolean {
  try {
    return fs.statSync(assetDir(name, hash, root)).isDirectory();
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- liveness

export interface LockOwner {
  pid: number;
  start: string | null;
}

function ownerAlive(owner: LockOwner): boolean {
  return isAlive(owner.pid, owner.start ?? undefined);
}

// ---------------------------------------------------------------- locks

function readOwner(lockPath: string): LockOwner | null {
  try {
    const o = JSON.parse(fs.readFileSync(lockPath, 'utf8')) as Partial<LockOwner>;
    if (typeof o.pid !== 'number') return null;
    return { pid: o.pid, start: typeof o.start === 'string' ? o.start : null };
  } catch {
    return null;
  }
}

export interface LockOptions {
  /** Give up after this long while a live owner holds the lock (default 1 h). */
  timeoutMs?: number;
  pollMs?: number;
  /** Called once when we start waiting for another live owner. */
  onWait?: (owner: LockOwner) => void;
}

/**
 * Tries once to take the lock. Returns true when taken; removes a stale lock
 * (owner dead, or unreadable and older than 10 s) and retries.
 */
export function tryLock(lockPath: string): boolean {
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      const fd = fs.openSync(lockPath, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL, 0o644);
      try {
        fs.writeSync(fd, JSON.stringify({ pid: process.pid, start: processStartTime(process.pid) ?? null }));
      } finally {
        fs.closeSync(fd);
      }
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const owner = readOwner(lockPath);
    let stale: boolean;
    if (owner) stale = !ownerAlive(owner);
    else {
      // Being written right now, or garbage from a crash between open and write.
      try {
        stale = Date.now() - fs.statSync(lockPath).mtimeMs > 10_000;
      } catch {
        stale = false; // vanished: just retry
        continue;
      }
    }
    if (!stale) return false;
    // Rename first so two processes that both saw it stale don't remove a fresh lock.
    const grave = `${lockPath}.stale-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
    try {
      fs.renameSync(lockPath, grave);
      const again = readOwner(grave);
      if (again && ownerAlive(again)) {
        // Someone took it between our read and rename: put it back if we can.
        try {
          fs.linkSync(grave, lockPath);
        } catch {
          /* they will notice */
        }
      }
      fs.rmSync(grave, { force: true });
    } catch {
      /* somebody else handled it */
    }
  }
  return false;
}

export function unlock(lockPath: string): void {
  const owner = readOwner(lockPath);
  if (owner && owner.pid === process.pid) fs.rmSync(lockPath, { force: true });
}

/** Runs fn while holding the lock file, waiting for a live owner to release it. */
export async function withLock<T>(lockPath: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 3600_000);
  let waited = false;
  while (!tryLock(lockPath)) {
    if (!waited) {
      waited = true;
      const owner = readOwner(lockPath);
      if (owner && opts.onWait) opts.onWait(owner);
    }
    if (Date.now() > deadline) throw new ShoalError(`timed out waiting for lock ${lockPath}`);
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 250));
  }
  try {
    return await fn();
  } finally {
    unlock(lockPath);
  }
}

// ---------------------------------------------------------------- build

const TMP_PREFIX = '.tmp-';

/** Removes temp build folders (and stale lock graves) whose building process is gone. */
export function sweepStale(root: string = cacheDir()): string[] {
  const removed: string[] = [];
  let names: string[];
  try {
    names = fs.readdirSync(root);
  } catch {
    return removed;
  }
  for (const n of names) {
    if (!n.startsWith(TMP_PREFIX) && !n.startsWith('.old-')) continue;
    // .tmp-<name>-<hash>-<pid>-<start>-<rand>
    const m = /-(\d+)-(\d+|x)-[0-9a-f]{8}$/.exec(n);
    if (m) {
      const owner: LockOwner = { pid: Number(m[1]), start: m[2] === 'x' ? null : (m[2] ?? null) };
      if (ownerAlive(owner)) continue;
    }
    fs.rmSync(path.join(root, n), { recursive: true, force: true });
    removed.push(n);
  }
  return removed;
}

export interface BuildOptions {
  root?: string;
  /** Rebuild even when the asset exists (the old folder is replaced atomically). */
  force?: boolean;
  onWait?: (owner: LockOwner) => void;
  lockTimeoutMs?: number;
}

/**
 * Returns the folder of asset name-hash, building it with `build(tmpDir)`
 * first if needed. `build` fills tmpDir; the folder is renamed into place
 * only after it resolves.
 */
export async function ensureAsset(
  name: string,
  hash: string,
  build: (tmpDir: string) => Promise<void>,
  opts: BuildOptions = {},
): Promise<{ dir: string; built: boolean }> {
  const root = opts.root ?? cacheDir();
  const dir = assetDir(name, hash, root);
  if (!opts.force && isBuilt(name, hash, root)) return { dir, built: false };
  fs.mkdirSync(root, { recursive: true, mode: 0o755 });
  const lockOpts: LockOptions = {};
  if (opts.onWait) lockOpts.onWait = opts.onWait;
  if (opts.lockTimeoutMs !== undefined) lockOpts.timeoutMs = opts.lockTimeoutMs;
  return withLock(
    `${dir}.lock`,
    async () => {
      // Another setup may have finished it while we waited.
      if (!opts.force && isBuilt(name, hash, root)) return { dir, built: false };
      sweepStale(root);
      const start = processStartTime(process.pid) ?? 'x';
      const rand = crypto.randomBytes(4).toString('hex');
      const tmp = path.join(root, `${TMP_PREFIX}${name}-${hash}-${process.pid}-${start}-${rand}`);
      fs.mkdirSync(tmp, { mode: 0o755 });
      try {
        await build(tmp);
        if (isBuilt(name, hash, root)) {
          // force: move the old one aside (rename is atomic), then delete it.
          const old = path.join(root, `.old-${name}-${hash}-${process.pid}-${start}-${rand}`);
          fs.renameSync(dir, old);
          fs.renameSync(tmp, dir);
          fs.rmSync(old, { recursive: true, force: true });
        } else {
          fs.renameSync(tmp, dir);
        }
      } finally {
        fs.rmSync(tmp, { recursive: true, force: true });
      }
      return { dir, built: true };
    },
    lockOpts,
  );
}

/**
 * Removes built folders `<name>-<hash16>` other than `keepHash`, sparing the
 * `spare` most recently built ones (a running VM may still boot from one).
 * Returns the removed folder names.
 */
export function pruneAssets(name: string, keepHash: string, spare: number, root: string = cacheDir()): string[] {
  const re = new RegExp(`^${name.replace(/[^a-z0-9]/gi, '\\$&')}-[0-9a-f]{16}$`);
  let names: string[];
  try {
    names = fs.readdirSync(root);
  } catch {
    return [];
  }
  const old = names
    .filter((n) => re.test(n) && n !== `${name}-${keepHash}`)
    .map((n) => ({ n, mtime: fs.statSync(path.join(root, n)).mtimeMs }))
    .sort((a, b) => b.mtime - a.mtime)
    .slice(spare);
  for (const o of old) {
    // Rename first so nothing ever sees a half-deleted asset under its final name.
    const grave = path.join(root, `.old-${o.n}-0-x-${crypto.randomBytes(4).toString('hex')}`);
    try {
      fs.renameSync(path.join(root, o.n), grave);
      fs.rmSync(grave, { recursive: true, force: true });
    } catch {
      /* another setup got there first */
    }
  }
  return old.map((o) => o.n);
}
