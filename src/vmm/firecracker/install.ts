/**
 * `shoal setup --vmm firecracker`: fetch the pinned official Firecracker
 * release for this host, verify its sha256, and unpack the binaries into
 * shoal's cache; or adopt a binary the user already has (--firecracker PATH).
 *
 * Release layout (docs/getting-started.md): the archive
 *   firecracker-<ver>-<arch>.tgz
 * unpacks to
 *   release-<ver>-<arch>/firecracker-<ver>-<arch>
 *   release-<ver>-<arch>/jailer-<ver>-<arch>
 * and GitHub publishes `firecracker-<ver>-<arch>.tgz.sha256.txt` next to it.
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { ShoalError } from '../../util/errors';
import { cacheDir } from '../../util/paths';

const execFileP = promisify(execFile);

export const FIRECRACKER_VERSION = 'v1.16.1';
export const RELEASE_BASE_URL = 'https://github.com/firecracker-microvm/firecracker/releases/download';

export type ReleaseArch = 'x86_64' | 'aarch64';

/** Firecracker's release name for a Node arch (process.arch). */
export function releaseArch(nodeArch: string = process.arch): ReleaseArch {
  if (nodeArch === 'x64') return 'x86_64';
  if (nodeArch === 'arm64') return 'aarch64';
  throw new ShoalError(`Firecracker has releases for x86_64 and aarch64 only, not ${nodeArch}`);
}

export interface ReleaseInfo {
  version: string;
  arch: ReleaseArch;
  archiveName: string;
  archiveUrl: string;
  checksumUrl: string;
  /** Archive member of the firecracker binary. */
  firecrackerMember: string;
  /** Archive member of the jailer binary. */
  jailerMember: string;
}

export function releaseInfo(version = FIRECRACKER_VERSION, arch: ReleaseArch = releaseArch(), baseUrl = RELEASE_BASE_URL): ReleaseInfo {
  if (!/^v\d+\.\d+\.\d+$/.test(version)) throw new ShoalError(`Firecracker release versions look like v1.16.1, not ${version}`);
  const archiveName = `firecracker-${version}-${arch}.tgz`;
  const base = `${baseUrl.replace(/\/+$/, '')}/${version}`;
  return {
    version,
    arch,
    archiveName,
    archiveUrl: `${base}/${archiveName}`,
    checksumUrl: `${base}/${archiveName}.sha256.txt`,
    firecrackerMember: `release-${version}-${arch}/firecracker-${version}-${arch}`,
    jailerMember: `release-${version}-${arch}/jailer-${version}-${arch}`,
  };
}

/** `<cache>/firecracker/<version>-<arch>/` */
export function installDir(version = FIRECRACKER_VERSION, arch: ReleaseArch = releaseArch(), cache = cacheDir()): string {
  return path.join(cache, 'firecracker', `${version}-${arch}`);
}

/** Where `shoal setup` leaves the binaries. */
export function installedPaths(version = FIRECRACKER_VERSION, arch: ReleaseArch = releaseArch(), cache = cacheDir()): { firecracker: string; jailer: string } {
  const dir = installDir(version, arch, cache);
  return { firecracker: path.join(dir, 'firecracker'), jailer: path.join(dir, 'jailer') };
}

/**
 * Parses a `.sha256.txt` ("<64 hex>  <file name>", as sha256sum writes it).
 * When the file names its file, it must be `expectedName`.
 */
export function parseChecksumFile(text: string, expectedName: string): string {
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    const m = /^([0-9a-fA-F]{64})(?:\s+\*?(\S+))?$/.exec(line);
    if (!m) continue;
    const name = m[2];
    if (name === undefined || path.basename(name) === expectedName) return m[1]!.toLowerCase();
  }
  throw new ShoalError(`the checksum file has no sha256 for ${expectedName}`);
}

export async function sha256OfFile(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  await pipeline(fs.createReadStream(file), h);
  return h.digest('hex');
}

export interface Progress {
  url: string;
  received: number;
  /** From Content-Length, when the server sent one. */
  total: number | null;
}

export interface InstallOptions {
  version?: string;
  arch?: ReleaseArch;
  cacheDir?: string;
  /** Mirror of the GitHub releases/download tree (tests use a local server). */
  baseUrl?: string;
  /** Adopt this binary instead of downloading (`--firecracker PATH`). */
  fromPath?: string;
  onProgress?: (p: Progress) => void;
  /** Per-download inactivity timeout (default 60 s). */
  timeoutMs?: number;
}

export interface InstallResult {
  firecracker: string;
  jailer: string | null;
  /** sha256 of the verified archive (null when adopting a local binary). */
  archiveSha256: string | null;
  source: 'download' | 'local' | 'cached';
}

function offlineHint(info: ReleaseInfo, dest: string): string {
  return `Download ${info.archiveUrl} (and ${info.checksumUrl}), extract ${info.firecrackerMember} and put it at ${dest}, or pass --firecracker PATH / set SHOAL_FIRECRACKER.`;
}

function describeFetchError(err: unknown): string {
  const e = err as { cause?: { code?: string; message?: string }; message?: string };
  return e.cause?.code ?? e.cause?.message ?? e.message ?? String(err);
}

async function download(url: string, dest: string, opts: InstallOptions): Promise<void> {
  const ctl = new AbortController();
  const timeoutMs = opts.timeoutMs ?? 60_000;
  let timer = setTimeout(() => ctl.abort(), timeoutMs);
  const bump = (): void => {
    clearTimeout(timer);
    timer = setTimeout(() => ctl.abort(), timeoutMs);
  };
  try {
    const res = await fetch(url, { signal: ctl.signal, redirect: 'follow' });
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status} for ${url}`);
    const len = Number(res.headers.get('content-length'));
    const total = Number.isFinite(len) && len > 0 ? len : null;
    let received = 0;
    const body = Readable.fromWeb(res.body as Parameters<typeof Readable.fromWeb>[0]);
    body.on('data', (c: Buffer) => {
      received += c.length;
      bump();
      opts.onProgress?.({ url, received, total });
    });
    await pipeline(body, fs.createWriteStream(dest));
  } finally {
    clearTimeout(timer);
  }
}

async function fetchText(url: string, opts: InstallOptions): Promise<string> {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), opts.timeoutMs ?? 60_000);
  try {
    const res = await fetch(url, { signal: ctl.signal, redirect: 'follow' });
    if (!res.ok) throw new Error(`HTTP ${res.status} for ${url}`);
    return await res.text();
  } finally {
    clearTimeout(timer);
  }
}

async function isExecutableFile(p: string): Promise<boolean> {
  try {
    const st = await fs.promises.stat(p);
    if (!st.isFile()) return false;
    await fs.promises.access(p, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Copies (or hard-links) src to dest atomically, mode 0755. */
async function placeBinary(src: string, dest: string): Promise<void> {
  const tmp = `${dest}.tmp-${process.pid}`;
  await fs.promises.rm(tmp, { force: true });
  await fs.promises.copyFile(src, tmp);
  await fs.promises.chmod(tmp, 0o755);
  await fs.promises.rename(tmp, dest);
}

/**
 * Installs Firecracker into the cache and returns where it is. Already
 * installed -> no network. Offline -> one ShoalError line saying what to
 * download and where to put it.
 */
export async function installFirecracker(opts: InstallOptions = {}): Promise<InstallResult> {
  const info = releaseInfo(opts.version ?? FIRECRACKER_VERSION, opts.arch ?? releaseArch(), opts.baseUrl ?? RELEASE_BASE_URL);
  const dir = installDir(info.version, info.arch, opts.cacheDir ?? cacheDir());
  const dest = path.join(dir, 'firecracker');
  const jailerDest = path.join(dir, 'jailer');
  await fs.promises.mkdir(dir, { recursive: true });

  if (opts.fromPath) {
    const src = path.resolve(opts.fromPath);
    if (!(await isExecutableFile(src))) throw new ShoalError(`--firecracker ${opts.fromPath}: not an executable file`);
    await placeBinary(src, dest);
    return { firecracker: dest, jailer: (await isExecutableFile(jailerDest)) ? jailerDest : null, archiveSha256: null, source: 'local' };
  }

  if (await isExecutableFile(dest)) {
    return { firecracker: dest, jailer: (await isExecutableFile(jailerDest)) ? jailerDest : null, archiveSha256: null, source: 'cached' };
  }

  const work = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'shoal-fc-'));
  try {
    const archive = path.join(work, info.archiveName);
    let expected: string;
    try {
      expected = parseChecksumFile(await fetchText(info.checksumUrl, opts), info.archiveName);
      await download(info.archiveUrl, archive, opts);
    } catch (err) {
      if (err instanceof ShoalError) throw err;
      throw new ShoalError(`Cannot download Firecracker ${info.version} (${describeFetchError(err)}). ${offlineHint(info, dest)}`);
    }
    const actual = await sha256OfFile(archive);
    if (actual !== expected) {
      throw new ShoalError(`Checksum mismatch for ${info.archiveName}: expected sha256 ${expected}, got ${actual}; the download is corrupt or tampered with, nothing was installed.`);
    }
    const out = path.join(work, 'x');
    await fs.promises.mkdir(out);
    try {
      await execFileP('tar', ['-xzf', archive, '-C', out, '--no-same-owner', '--', info.firecrackerMember]);
    } catch (err) {
      throw new ShoalError(`${info.archiveName} does not contain ${info.firecrackerMember} (${(err as Error).message.split('\n')[0]})`);
    }
    await placeBinary(path.join(out, info.firecrackerMember), dest);
    let jailer: string | null = null;
    try {
      await execFileP('tar', ['-xzf', archive, '-C', out, '--no-same-owner', '--', info.jailerMember]);
      await placeBinary(path.join(out, info.jailerMember), jailerDest);
      jailer = jailerDest;
    } catch {
      jailer = null; // The jailer is optional (only for --jailer).
    }
    return { firecracker: dest, jailer, archiveSha256: actual, source: 'download' };
  } finally {
    await fs.promises.rm(work, { recursive: true, force: true });
  }
}
