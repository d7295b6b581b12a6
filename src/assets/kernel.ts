/**
 * The guest kernel: Debian's linux-image-cloud-amd64, downloaded with apt and
 * unpacked into a cache folder holding
 *   vmlinuz       the bzImage (QEMU boots this)
 *   vmlinux       the uncompressed ELF extracted from it (Firecracker boots this)
 *   config        the kernel config
 *   modules/<kver>/  the module tree, with modules.dep from depmod
 *   kernel.json   { version, package, packageVersion, codec }
 * Input hash: the resolved concrete package name and version.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ShoalError } from '../util/errors';
import { ensureAsset, hashParts, type BuildOptions } from './cache';
import { requireTools, run } from './tools';
import { extractVmlinux } from './vmlinux';

export const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';

export interface KernelPackage {
  /** Concrete package, e.g. linux-image-6.1.0-56-cloud-amd64. */
  name: string;
  version: string;
}

export interface KernelAsset {
  dir: string;
  hash: string;
  /** uname -r, e.g. 6.1.0-56-cloud-amd64. */
  version: string;
  vmlinuz: string;
  vmlinux: string;
  config: string;
  /** /lib/modules/<version> equivalent (contains modules.dep). */
  modulesDir: string;
  pkg: KernelPackage;
}

export interface KernelJson {
  version: string;
  package: string;
  packageVersion: string;
  codec: string;
}

/** Candidate version from `apt-cache policy` output, or null. */
export function parsePolicyCandidate(text: string): string | null {
  const m = /^\s*Candidate:\s*(\S+)/m.exec(text);
  if (!m || m[1] === '(none)') return null;
  return m[1] ?? null;
}

/** The linux-image-<kver> package a metapackage's `apt-cache show` record depends on. */
export function parseMetaDepends(showText: string): string | null {
  const m = /^Depends:\s*(.*)$/m.exec(showText);
  if (!m) return null;
  for (const alt of (m[1] ?? '').split(',')) {
    const name = alt.trim().split(/[\s(|]/)[0] ?? '';
    if (/^linux-image-\d/.test(name)) return name;
  }
  return null;
}

async function candidate(pkg: string): Promise<string | null> {
  const { stdout } = await run('apt-cache', ['policy', pkg]);
  return parsePolicyCandidate(stdout);
}

/** Resolves linux-image-cloud-amd64 to the concrete package and version apt would install (runs apt-cache). */
export async function resolveKernelPackage(progress?: (m: string) => void): Promise<KernelPackage> {
  requireTools(['apt-cache', 'apt-get']);
  let metaVer = await candidate(KERNEL_META_PACKAGE);
  if (!metaVer) {
    progress?.('apt has no candidate for the kernel package; running apt-get update');
    await run('apt-get', ['update', '-q']);
    metaVer = await candidate(KERNEL_META_PACKAGE);
  }
  if (!metaVer) throw new ShoalError(`apt cannot find ${KERNEL_META_PACKAGE}: check /etc/apt/sources.list and run \`apt-get update\``);
  const { stdout } = await run('apt-cache', ['show', `${KERNEL_META_PACKAGE}=${metaVer}`]);
  const name = parseMetaDepends(stdout);
  if (!name) throw new ShoalError(`cannot tell which kernel ${KERNEL_META_PACKAGE} ${metaVer} depends on`);
  const version = await candidate(name);
  if (!version) throw new ShoalError(`apt has no candidate for ${name}`);
  return { name, version };
}

export function kernelHash(pkg: KernelPackage): string {
  return hashParts(['kernel/v1', pkg.name, pkg.version]);
}

/** Reads a built kernel folder. */
export function loadKernel(dir: string, hash: string): KernelAsset {
  const meta = JSON.parse(fs.readFileSync(path.join(dir, 'kernel.json'), 'utf8')) as KernelJson;
  return {
    dir,
    hash,
    version: meta.version,
    vmlinuz: path.join(dir, 'vmlinuz'),
    vmlinux: path.join(dir, 'vmlinux'),
    config: path.join(dir, 'config'),
    modulesDir: path.join(dir, 'modules', meta.version),
    pkg: { name: meta.package, version: meta.packageVersion },
  };
}

/** Downloads and unpacks the kernel package into out (a fresh temp folder). */
export async function buildKernel(out: string, pkg: KernelPackage, progress?: (m: string) => void): Promise<void> {
  requireTools(['apt-get', 'dpkg-deb', 'depmod']);
  const dl = path.join(out, '.download');
  fs.mkdirSync(dl, { mode: 0o755 });
  fs.chmodSync(out, 0o755);
  progress?.(`downloading ${pkg.name} ${pkg.version}`);
  // apt drops privileges to _apt for downloads; it must be able to write here, or run as root.
  await run('apt-get', ['download', '-q', '-o', 'APT::Sandbox::User=root', `${pkg.name}=${pkg.version}`], { cwd: dl });
  const deb = fs.readdirSync(dl).find((f) => f.endsWith('.deb'));
  if (!deb) throw new ShoalError(`apt-get download ${pkg.name} produced no .deb`);
  const x = path.join(out, '.extract');
  await run('dpkg-deb', ['-x', path.join(dl, deb), x]);
  const modRoot = path.join(x, 'lib', 'modules');
  const kvers = fs.existsSync(modRoot) ? fs.readdirSync(modRoot) : [];
  const kver = kvers.find((k) => fs.existsSync(path.join(x, 'boot', `vmlinuz-${k}`)));
  if (!kver) throw new ShoalError(`${deb} has no /boot/vmlinuz-<version> with matching modules`);
  progress?.(`unpacking kernel ${kver}`);
  await run('depmod', ['-b', x, kver]);
  fs.renameSync(path.join(x, 'boot', `vmlinuz-${kver}`), path.join(out, 'vmlinuz'));
  fs.renameSync(path.join(x, 'boot', `config-${kver}`), path.join(out, 'config'));
  fs.mkdirSync(path.join(out, 'modules'));
  fs.renameSync(path.join(modRoot, kver), path.join(out, 'modules', kver));
  const { codec, elf } = await extractVmlinux(fs.readFileSync(path.join(out, 'vmlinuz')));
  fs.writeFileSync(path.join(out, 'vmlinux'), elf);
  const meta: KernelJson = { version: kver, package: pkg.name, packageVersion: pkg.version, codec };
  fs.writeFileSync(path.join(out, 'kernel.json'), JSON.stringify(meta, null, 2) + '\n');
  fs.rmSync(dl, { recursive: true, force: true });
  fs.rmSync(x, { recursive: true, force: true });
}

/** Returns the kernel asset for pkg, downloading and unpacking it if it isn't cached. */
export async function ensureKernel(
  pkg: KernelPackage,
  opts: BuildOptions & { progress?: (m: string) => void } = {},
): Promise<KernelAsset & { built: boolean }> {
  const hash = kernelHash(pkg);
  const { dir, built } = await ensureAsset('kernel', hash, (tmp) => buildKernel(tmp, pkg, opts.progress), opts);
  return { ...loadKernel(dir, hash), built };
}
