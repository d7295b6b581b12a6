/**
 * Snapshots on disk: <state>/snapshots/<tag>/ holds
 *   snapshot.json  the manifest, written last: a directory without it is not a snapshot
 *   state.bin      device/VM state (QEMU migration stream, x-ignore-shared)
 *   memory.raw     guest RAM (clones map it MAP_PRIVATE, so they share its pages)
 *   scratch.img    the scratch disk (each clone gets its own reflinked or sparse copy)
 * A snapshot is built in .tmp-<tag>-<pid>/ and renamed into place, so a killed create never
 * leaves a directory that looks complete; readers skip dot-entries, and listing sweeps temp
 * directories whose creator is gone. fork keeps its snapshot in .fork-<pid>-<rand>/.
 *
 * Lineage: a snapshot of a VM that was itself restored records that VM's snapshot as its
 * parent, and each restored VM's record names the snapshot it came from (restoredFrom), so
 * `snapshot ls` shows both ways. A child snapshot is complete on its own (its memory file is a
 * fresh copy of its source's RAM, its disk a copy of its source's disk), so it never depends on
 * its parent's files. A live clone maps its snapshot's memory file MAP_PRIVATE; unlinking that
 * file is safe for the clone (the mapping and QEMU's fd keep the inode and its pages until the
 * clone ends, on tmpfs and disk filesystems alike), but the space would then stay taken, out of
 * sight, until the last clone ends. So `snapshot rm` refuses while live clones of the snapshot
 * exist, and names them; --force removes it anyway.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fsyncDir, fsyncFilesIn, readJson, writeJsonAtomic } from '../state/atomic';
import type { StateStore } from '../state/store';
import type { Accelerator, VmmKind, VmSpec } from '../vmm/backend';
import { statusOf } from '../state/store';
import { restoreInfoPath, type RestoreInfo } from '../state/vm-files';
import type { SnapshotRef, VmConfig, VmRecord } from '../state/vm-record';
import { ShoalError } from '../util/errors';
import { isAlive } from '../util/process';

export const MANIFEST = 'snapshot.json';

export interface SnapshotManifest {
  version: 1;
  tag: string;
  /** Unique per snapshot (a later snapshot may reuse a removed one's tag); absent in older manifests. */
  id?: string;
  /** The snapshot the source VM was restored from, when it was restored rather than booted. */
  parent?: SnapshotRef;
  createdAt: string;
  source: { id: string; name: string };
  backend: VmmKind;
  accel: Accelerator;
  /** The source VM's configuration (image, command, shape); clones inherit it. */
  config: VmConfig;
  loadedImage?: string;
  /** The boot spec of the source: kernel, cmdline, shape, drives (the scratch drive is replaced per clone). */
  vmSpec: VmSpec;
  files: { state: string; memory: string; scratch: string };
  /** Allocated bytes of each file. */
  bytes: { state: number; memory: number; scratch: number };
  /** Milliseconds the source was paused, and the whole create. */
  timings: { pausedMs: number; totalMs: number };
}

export interface SnapshotEntry {
  tag: string;
  dir: string;
  manifest: SnapshotManifest;
}

export function snapshotsDir(store: StateStore): string {
  return path.join(store.root, 'snapshots');
}

/** The file names inside a snapshot directory: the one place they are spelled. */
export const SNAPSHOT_FILE_NAMES = { state: 'state.bin', memory: 'memory.raw', scratch: 'scratch.img' } as const;

export function snapshotFiles(dir: string): { state: string; memory: string; scratch: string } {
  return { state: path.join(dir, SNAPSHOT_FILE_NAMES.state), memory: path.join(dir, SNAPSHOT_FILE_NAMES.memory), scratch: path.join(dir, SNAPSHOT_FILE_NAMES.scratch) };
}

/** What a manifest is built from: the source VM as its supervisor reported it, and the timings. */
export interface ManifestSource {
  tag: string;
  source: { id: string; name: string };
  backend: VmmKind;
  accel: Accelerator;
  config: VmConfig;
  vmSpec: VmSpec;
  loadedImage: string | null | undefined;
  /** The snapshot the source was restored from (lineage), if it was. */
  parent: SnapshotRef | null | undefined;
  timings: { pausedMs: number; totalMs: number };
}

/**
 * The one manifest builder (snapshot create, fork, the image cache). `dir` holds the files
 * already; their allocated sizes are recorded when measure is set.
 */
export function buildManifest(dir: string, from: ManifestSource, options: { measure: boolean }): SnapshotManifest {
  const files = snapshotFiles(dir);
  const manifest: SnapshotManifest = {
    version: 1,
    tag: from.tag,
    id: newSnapshotId(),
    createdAt: new Date().toISOString(),
    source: from.source,
    backend: from.backend,
    accel: from.accel,
    config: from.config,
    vmSpec: from.vmSpec,
    files: { ...SNAPSHOT_FILE_NAMES },
    bytes: options.measure
      ? { state: allocatedBytes(files.state), memory: allocatedBytes(files.memory), scratch: allocatedBytes(files.scratch) }
      : { state: 0, memory: 0, scratch: 0 },
    timings: from.timings,
  };
  if (from.loadedImage) manifest.loadedImage = from.loadedImage;
  if (from.parent) manifest.parent = from.parent;
  return manifest;
}

export function tagProblem(tag: string): string | undefined {
  if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(tag)) return `tag "${tag}" must match [a-zA-Z0-9][a-zA-Z0-9_.-]*`;
  if (tag.length > 63) return 'tag is longer than 63 characters';
  return undefined;
}

/** A fresh temp directory for building a snapshot (named so a sweep can tell whether its creator lives). */
export function makeTempDir(store: StateStore, label: string, kind: 'tmp' | 'fork' = 'tmp'): string {
  const base = store.ensureDir('snapshots');
  const dir = path.join(base, `.${kind}-${label}-${process.pid}-${crypto.randomBytes(3).toString('hex')}`);
  fs.mkdirSync(dir, { mode: 0o700 });
  return dir;
}

/** Writes the manifest last and renames the directory into place; fails if the tag exists. */
export function publish(store: StateStore, tempDir: string, manifest: SnapshotManifest): string {
  const problem = tagProblem(manifest.tag);
  if (problem) throw new ShoalError(`invalid snapshot tag: ${problem}`);
  writeJsonAtomic(path.join(tempDir, MANIFEST), manifest);
  // Everything on disk before the rename that makes it visible (and the rename itself after).
  fsyncFilesIn(tempDir);
  const final = path.join(snapshotsDir(store), manifest.tag);
  if (fs.existsSync(final)) throw new ShoalError(`snapshot ${manifest.tag} already exists`);
  fs.renameSync(tempDir, final);
  fsyncDir(snapshotsDir(store));
  return final;
}

export function readSnapshotDir(dir: string): SnapshotManifest | undefined {
  return readJson<SnapshotManifest>(path.join(dir, MANIFEST));
}

export function findSnapshot(store: StateStore, tag: string): SnapshotEntry {
  const problem = tagProblem(tag);
  if (problem) throw new ShoalError(`invalid snapshot tag: ${problem}`);
  const dir = path.join(snapshotsDir(store), tag);
  const manifest = readSnapshotDir(dir);
  if (!manifest) throw new ShoalError(`no such snapshot: ${tag}`);
  return { tag, dir, manifest };
}

/** Complete, visible snapshots; sweeps temp directories whose creating process is gone. */
export function listSnapshots(store: StateStore): SnapshotEntry[] {
  sweepStale(store);
  let entries: string[] = [];
  try {
    entries = fs.readdirSync(snapshotsDir(store));
  } catch {
    return [];
  }
  const out: SnapshotEntry[] = [];
  for (const tag of entries) {
    if (tag.startsWith('.')) continue;
    const dir = path.join(snapshotsDir(store), tag);
    const manifest = readSnapshotDir(dir);
    if (manifest) out.push({ tag, dir, manifest });
  }
  return out.sort((a, b) => a.manifest.createdAt.localeCompare(b.manifest.createdAt));
}

export function sweepStale(store: StateStore): string[] {
  const swept: string[] = [];
  let restoring: Set<string> | undefined;
  let entries: string[] = [];
  try {
    entries = fs.readdirSync(snapshotsDir(store));
  } catch {
    return swept;
  }
  for (const entry of entries) {
    const match = /^\.(?:tmp|fork|rm)-.*-(\d+)-[0-9a-f]{6}$/.exec(entry);
    if (!match) continue;
    if (isAlive(Number(match[1]))) continue;
    const dir = path.join(snapshotsDir(store), entry);
    if ((restoring ??= restoringFrom(store)).has(dir)) continue;
    fs.rmSync(dir, { recursive: true, force: true });
    swept.push(entry);
  }
  return swept;
}

/**
 * Snapshot directories that VMs still being restored read from. A fork's hidden snapshot outlives
 * a killed fork CLI until its children have mapped its memory and copied its disk: a child's
 * supervisor sweeping at its start must not pull it from under a sibling that is still restoring
 * (seen in the kill -9 suite: both children failed, "can't open backing store"). Once a child
 * runs, it needs nothing from the directory (an unlinked memory file stays mapped).
 */
function restoringFrom(store: StateStore): Set<string> {
  const dirs = new Set<string>();
  for (const record of store.list()) {
    const status = statusOf(record);
    if (status !== 'creating' && status !== 'starting') continue;
    const info = readJson<RestoreInfo>(restoreInfoPath(store.vmDir(record.id)));
    if (info && typeof info.snapshotDir === 'string') dirs.add(path.resolve(info.snapshotDir));
  }
  return dirs;
}

export function newSnapshotId(): string {
  return crypto.randomBytes(8).toString('hex');
}

/** Whether a VM's restoredFrom names this snapshot (by id; by tag for manifests without one). */
export function isRestoredFrom(record: VmRecord, manifest: Pick<SnapshotManifest, 'tag' | 'id'>): boolean {
  const from = record.restoredFrom;
  if (!from || from.tag !== manifest.tag) return false;
  return manifest.id === undefined || from.id === undefined || from.id === manifest.id;
}

const LIVE = new Set(['creating', 'starting', 'running', 'stopping']);

/** VMs whose supervisor still runs (a dead or stopped VM maps nothing). */
export function isLive(record: VmRecord): boolean {
  return LIVE.has(statusOf(record));
}

export interface SnapshotLineage {
  /** The parent snapshot's tag (it may have been removed since: a child never needs it). */
  parent: string | null;
  /** Listed snapshots taken of VMs restored from this one. */
  children: string[];
  /** Names of live VMs restored from this snapshot (their memory maps its memory file). */
  liveClones: string[];
}

/** Parent, child snapshots and live clones of each snapshot, from the manifests and the VM records. */
export function lineageOf(entries: SnapshotEntry[], records: VmRecord[], live: (record: VmRecord) => boolean = isLive): Map<string, SnapshotLineage> {
  const out = new Map<string, SnapshotLineage>();
  for (const { tag, manifest } of entries) {
    out.set(tag, {
      parent: manifest.parent?.tag ?? null,
      children: entries.filter((e) => e.manifest.parent !== undefined && e.manifest.parent.tag === tag && (manifest.id === undefined || e.manifest.parent.id === undefined || e.manifest.parent.id === manifest.id)).map((e) => e.tag),
      liveClones: records.filter((r) => isRestoredFrom(r, manifest) && live(r)).map((r) => r.config.name).sort(),
    });
  }
  return out;
}

/** Throws unless the snapshot exists and, without force, no live VM was restored from it. */
export function checkRemovable(store: StateStore, tag: string, options: { force?: boolean } = {}): SnapshotEntry {
  const entry = findSnapshot(store, tag);
  const clones = store.list().filter((r) => isRestoredFrom(r, entry.manifest) && isLive(r)).map((r) => r.config.name).sort();
  if (clones.length > 0 && !options.force) {
    throw new ShoalError(`snapshot ${tag} has live clones (${clones.join(', ')}), whose memory maps its memory file: remove them first, or use --force (its space is then freed only when the last of them ends)`);
  }
  return entry;
}

export function removeSnapshot(store: StateStore, tag: string, options: { force?: boolean } = {}): void {
  const entry = checkRemovable(store, tag, options);
  // Rename first, so a reader never sees a half-deleted snapshot. Clones that run from it keep
  // working: their QEMU maps memory.raw, and a mapping keeps the file's pages until it goes.
  const doomed = path.join(snapshotsDir(store), `.rm-${tag}-${process.pid}-${crypto.randomBytes(3).toString('hex')}`);
  fs.renameSync(entry.dir, doomed);
  fs.rmSync(doomed, { recursive: true, force: true });
}

/** Allocated size (st_blocks), which is what a sparse file really costs. */
export function allocatedBytes(file: string): number {
  try {
    return fs.statSync(file).blocks * 512;
  } catch {
    return 0;
  }
}

/**
 * The control socket's `snapshot` request names the directory the supervisor (root) writes the
 * VM's memory and disk into: only a fresh temp directory of this state directory's snapshots/
 * (made by makeTempDir) is accepted, and only as a real directory, not a symlink.
 */
export function snapshotTempDirProblem(store: StateStore, dir: string): string | undefined {
  const base = snapshotsDir(store);
  if (!dir || path.dirname(path.resolve(dir)) !== base || !/^\.(?:tmp|fork)-[A-Za-z0-9_.-]+$/.test(path.basename(dir))) {
    return `snapshot directory ${dir} is not a temporary directory of ${base}`;
  }
  try {
    const st = fs.lstatSync(dir);
    if (!st.isDirectory() || st.uid !== (process.geteuid?.() ?? 0)) return `snapshot directory ${dir} is not a directory of ours`;
  } catch {
    return `snapshot directory ${dir} does not exist`;
  }
  return undefined;
}
