/**
 * The automatic image cache: the first `shoal run` of an image snapshots its VM once the image
 * is loaded and before the container starts; later runs with the same key restore that snapshot
 * instead of booting and loading again. The key is a hash of the image's digest, the command,
 * the environment and the VM's shape (everything the restored device state depends on: vCPUs,
 * memory, backend, accelerator, network device, kernel, initramfs, rootfs).
 *
 * Entries live in <state>/image-cache/<key>/, built in a dot-directory and renamed into place
 * with their manifest written last, like named snapshots.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ImageSource } from '../container/image-ref';
import { fsyncDir, fsyncFilesIn, writeJsonAtomic } from '../state/atomic';
import type { StateStore } from '../state/store';
import { isAlive as processIsAlive, processStartTime } from '../util/process';
import type { VmConfig } from '../state/vm-record';
import type { VmSpec } from '../vmm/backend';
import { MANIFEST, readSnapshotDir, type SnapshotManifest } from './store';

export function imageCacheRoot(store: StateStore): string {
  return path.join(store.root, 'image-cache');
}

/** The image's identity: a hash of the archive's bytes, or the registry reference as given. */
export async function imageDigest(source: ImageSource): Promise<string> {
  if (source.kind === 'registry') return `ref:${source.reference}`;
  const hash = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(source.path)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

export function imageCacheKey(digest: string, config: VmConfig, spec: VmSpec, backend: string, accel: string): string {
  const shape = {
    version: 1,
    digest,
    command: config.command,
    env: config.env,
    // What the container runs as, where and with which privileges; only when given, so the
    // keys of plain runs stay what they were.
    ...(config.container && Object.keys(config.container).length > 0 ? { container: config.container } : {}),
    cpus: spec.cpus,
    memoryMiB: spec.memoryMiB,
    backend,
    accel,
    network: spec.net ? 'nic' : 'none',
    kernel: spec.kernel,
    initrd: spec.initrd ?? null,
    drives: spec.drives.filter((d) => d.readOnly).map((d) => d.path),
    // The hostname is per VM and set again after a restore; everything else on the line counts.
    cmdline: spec.cmdline.replace(/\bshoal\.hostname=\S+/, ''),
  };
  return crypto.createHash('sha256').update(JSON.stringify(shape)).digest('hex').slice(0, 32);
}

export function cachedImageSnapshot(store: StateStore, key: string): { dir: string; manifest: SnapshotManifest } | undefined {
  const dir = path.join(imageCacheRoot(store), key);
  const manifest = readSnapshotDir(dir);
  return manifest ? { dir, manifest } : undefined;
}

export function newImageCacheTempDir(store: StateStore, key: string): string {
  const root = store.ensureDir('image-cache');
  return fs.mkdtempSync(path.join(root, `.tmp-${key}-${process.pid}-`));
}

/** Writes the manifest last and renames the entry into place; a racing run that got there first wins. */
export function publishImageCache(store: StateStore, tempDir: string, key: string, manifest: SnapshotManifest): void {
  writeJsonAtomic(path.join(tempDir, MANIFEST), manifest);
  fsyncFilesIn(tempDir);
  try {
    fs.renameSync(tempDir, path.join(imageCacheRoot(store), key));
    fsyncDir(imageCacheRoot(store));
  } catch {
    fs.rmSync(tempDir, { recursive: true, force: true });
  }
}

/** How many entries the cache keeps (each holds a guest's RAM and disk: hundreds of MiB). */
export function imageCacheLimit(env: NodeJS.ProcessEnv = process.env): number {
  const value = Number(env.SHOAL_IMAGE_CACHE_MAX ?? 5);
  return Number.isInteger(value) && value >= 0 ? value : 5;
}

/** Marks an entry as just used (its manifest's mtime orders eviction). */
export function touchImageCache(dir: string): void {
  const now = new Date();
  try {
    fs.utimesSync(path.join(dir, MANIFEST), now, now);
  } catch {
    // evicted meanwhile
  }
}

/**
 * Keeps the `limit` most recently used entries and removes the rest, and the temporary
 * directories of saves whose process died. An entry is renamed away before it is deleted, so a
 * run restoring from it either finds it whole or not at all; a VM already restored from it keeps
 * its memory (its mapping holds the file) and has its own disk copy.
 */
export function evictImageCache(store: StateStore, limit: number = imageCacheLimit(), isAlive: (pid: number) => boolean = pidAlive): string[] {
  const root = imageCacheRoot(store);
  let names: string[];
  try {
    names = fs.readdirSync(root);
  } catch {
    return [];
  }
  const removed: string[] = [];
  const remove = (name: string): void => {
    const trash = path.join(root, `.evicted-${name}-${process.pid}-${Date.now()}`);
    try {
      fs.renameSync(path.join(root, name), trash);
    } catch {
      return; // gone already
    }
    fs.rmSync(trash, { recursive: true, force: true });
    removed.push(name);
  };
  const entries: { name: string; usedMs: number }[] = [];
  for (const name of names) {
    if (SAVE_TEMP.test(name)) {
      if (isDeadSaveTemp(name, isAlive)) remove(name);
      continue;
    }
    if (name.startsWith('.evicted-')) {
      fs.rmSync(path.join(root, name), { recursive: true, force: true });
      continue;
    }
    // An entry a starting VM is restoring from (src/snapshot/lease.ts) stays, however old.
    if (leased(path.join(root, name))) continue;
    try {
      entries.push({ name, usedMs: fs.statSync(path.join(root, name, MANIFEST)).mtimeMs });
    } catch {
      // no manifest: not an entry
    }
  }
  entries.sort((a, b) => b.usedMs - a.usedMs);
  for (const entry of entries.slice(limit)) remove(entry.name);
  return removed;
}

/**
 * Removes the temp directories of saves whose process died (a supervisor killed -9 mid-save
 * leaves one, up to a guest's RAM and disk in size). evictImageCache does this too, but only
 * after a save; this runs at every supervisor start, so the leak ends with the next start.
 */
export function sweepImageCacheTemps(store: StateStore, isAlive: (pid: number) => boolean = pidAlive): string[] {
  const root = imageCacheRoot(store);
  let names: string[];
  try {
    names = fs.readdirSync(root);
  } catch {
    return [];
  }
  const swept: string[] = [];
  for (const name of names) {
    if (!isDeadSaveTemp(name, isAlive)) continue;
    fs.rmSync(path.join(root, name), { recursive: true, force: true });
    swept.push(name);
  }
  return swept;
}

/** A save's temp directory, named by newImageCacheTempDir: `.tmp-<key>-<pid>-XXXXXX`. */
const SAVE_TEMP = /^\.tmp-[0-9a-f]+-(\d+)-/;

/** Whether name is a save's temp directory whose process is gone. */
function isDeadSaveTemp(name: string, isAlive: (pid: number) => boolean): boolean {
  const temp = SAVE_TEMP.exec(name);
  return temp !== null && !isAlive(Number(temp[1]));
}

/** Zombie-aware (a killed supervisor not yet reaped is dead): see util/process.ts. */
function pidAlive(pid: number): boolean {
  return processIsAlive(pid);
}

/**
 * A lease on a snapshot or cache entry while a VM is restored from it: `.lease-<pid>-<start>`
 * in its directory, removed once the VMM has mapped its memory (the mapping keeps the pages after
 * that). Eviction skips an entry with a live lease, so a restore never loses its files midway.
 */
export function leaseSnapshotDir(dir: string): () => void {
  const file = path.join(dir, `.lease-${process.pid}-${processStartTime(process.pid) ?? '0'}`);
  try {
    fs.writeFileSync(file, '', { mode: 0o600 });
  } catch {
    return () => undefined; // the entry is gone already; the restore will say so
  }
  return () => fs.rmSync(file, { force: true });
}

function leased(dir: string): boolean {
  let entries: string[];
  try {
    entries = fs.readdirSync(dir);
  } catch {
    return false;
  }
  for (const entry of entries) {
    const match = /^\.lease-(\d+)-(\S+)$/.exec(entry);
    if (!match) continue;
    if (processIsAlive(Number(match[1]), match[2] === '0' ? undefined : match[2])) return true;
    fs.rmSync(path.join(dir, entry), { force: true });
  }
  return false;
}
