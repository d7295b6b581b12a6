/**
 * The guest root filesystem: a minimal Debian bookworm with podman, crun,
 * conmon, Node and tini (mmdebstrap, no recommends), the kernel's modules,
 * and shoal's container configuration, imaged as ext4 with mkfs.ext4 -d (no
 * loop mounts). Every VM shares it read-only as vda.
 *
 * Input hash: recipe version, suite, mirrors, apt options, package list,
 * config texts and the kernel hash.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ensureAsset, hashParts, stableJson, type BuildOptions } from './cache';
import type { KernelAsset } from './kernel';
import { requireTools, run } from './tools';

export const ROOTFS_SUITE = 'bookworm';

/** Packages on top of minbase. Recommends are off, so podman's real needs are listed. */
export const ROOTFS_PACKAGES: readonly string[] = [
  'podman',
  'crun',
  'conmon',
  'catatonit',
  'golang-github-containers-common',
  'containernetworking-plugins',
  'iptables',
  'nodejs',
  'tini',
  'iproute2',
  'kmod',
  'ca-certificates',
  'procps',
  'util-linux',
  'mount',
  'e2fsprogs',
];

/** apt sources for mmdebstrap. SHOAL_DEBIAN_MIRROR / SHOAL_DEBIAN_SECURITY_MIRROR override the hosts. */
export function rootfsSources(suite: string = ROOTFS_SUITE): string[] {
  const main = process.env.SHOAL_DEBIAN_MIRROR || 'http://deb.debian.org/debian';
  const sec = process.env.SHOAL_DEBIAN_SECURITY_MIRROR || 'http://deb.debian.org/debian-security';
  return [`deb ${main} ${suite} main`, `deb ${main} ${suite}-updates main`, `deb ${sec} ${suite}-security main`];
}

const APT_OPTS = [
  'APT::Install-Recommends "false"',
  'APT::Install-Suggests "false"',
  // Snapshot mirrors serve Release files whose Valid-Until is in the past.
  'Acquire::Check-Valid-Until "false"',
];

const DPKG_OPTS = [
  'path-exclude=/usr/share/doc/*',
  'path-include=/usr/share/doc/*/copyright',
  'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/locale/*',
  'path-exclude=/usr/share/lintian/*',
];

export const CONTAINERS_CONF = `# shoal: podman inside a single-tenant microVM.
[containers]
netns = "host"
log_driver = "k8s-file"
# Setting network sysctls is refused in the host network namespace.
default_sysctls = []

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "crun"
# The guest root sits on top of the initramfs (rootfs), where pivot_root(2) is refused.
no_pivot_root = true
`;

export const STORAGE_CONF = `# shoal: container storage is on the per-VM scratch disk (bind-mounted by guest-init).
[storage]
driver = "overlay"
graphroot = "/var/lib/containers/storage"
runroot = "/run/containers/storage"

[storage.options.overlay]
mountopt = "nodev"
`;

export const REGISTRIES_CONF = `# shoal
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
`;

export interface RootfsRecipe {
  suite: string;
  sources: string[];
  packages: readonly string[];
  aptOpts: readonly string[];
  dpkgOpts: readonly string[];
  files: Record<string, string>;
}

export function rootfsRecipe(): RootfsRecipe {
  return {
    suite: ROOTFS_SUITE,
    sources: rootfsSources(),
    packages: ROOTFS_PACKAGES,
    aptOpts: APT_OPTS,
    dpkgOpts: DPKG_OPTS,
    files: {
      'etc/containers/containers.conf': CONTAINERS_CONF,
      'etc/containers/storage.conf': STORAGE_CONF,
      'etc/containers/registries.conf': REGISTRIES_CONF,
      'etc/hostname': 'shoal\n',
    },
  };
}

export function rootfsHash(kernel: KernelAsset, recipe: RootfsRecipe = rootfsRecipe()): string {
  return hashParts(['rootfs/v1', kernel.hash, stableJson(recipe)]);
}

/** Bytes and inode count of a tree (st_blocks based, like du). */
function treeUsage(dir: string): { bytes: number; inodes: number } {
  let bytes = 0;
  let inodes = 0;
  const seen = new Set<string>();
  const walk = (d: string): void => {
    for (const n of fs.readdirSync(d)) {
      const p = path.join(d, n);
      const st = fs.lstatSync(p);
      inodes++;
      if (st.nlink > 1 && !st.isDirectory()) {
        const key = `${st.dev}:${st.ino}`;
        if (seen.has(key)) continue;
        seen.add(key);
      }
      bytes += Math.max(st.blocks * 512, 0);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return { bytes, inodes };
}

/** ext4 image size for a tree: used space + 20% + 64 MiB, rounded up to 4 MiB. */
export function imageSizeFor(bytes: number): number {
  const raw = bytes * 1.2 + (64 << 20);
  const step = 4 << 20;
  return Math.ceil(raw / step) * step;
}

async function buildRootfs(out: string, kernel: KernelAsset, recipe: RootfsRecipe, progress?: (m: string) => void): Promise<void> {
  requireTools(['mmdebstrap', 'mkfs.ext4', 'depmod']);
  const root = path.join(out, 'root');
  const args = ['--variant=minbase', `--include=${recipe.packages.join(',')}`];
  for (const o of recipe.aptOpts) args.push(`--aptopt=${o}`);
  for (const o of recipe.dpkgOpts) args.push(`--dpkgopt=${o}`);
  args.push('--quiet', recipe.suite, root, ...recipe.sources);
  progress?.(`building rootfs with mmdebstrap (${recipe.suite}, ${recipe.packages.length} packages; about a minute)`);
  const t0 = Date.now();
  await run('mmdebstrap', args);
  progress?.(`mmdebstrap done in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  // Kernel modules, for guest-init's modprobe.
  const modDest = path.join(root, 'lib', 'modules', kernel.version);
  fs.mkdirSync(path.dirname(modDest), { recursive: true });
  await run('cp', ['-a', kernel.modulesDir, modDest]);
  await run('depmod', ['-b', root, kernel.version]);

  for (const [rel, text] of Object.entries(recipe.files)) {
    const p = path.join(root, rel);
    fs.mkdirSync(path.dirname(p), { recursive: true });
    fs.writeFileSync(p, text);
  }
  // Shrink: apt state and caches are useless in a read-only root.
  for (const rel of ['var/cache/apt', 'var/lib/apt/lists', 'var/cache/debconf', 'var/log']) {
    const d = path.join(root, rel);
    if (!fs.existsSync(d)) continue;
    for (const n of fs.readdirSync(d)) {
      if (rel === 'var/log' && fs.statSync(path.join(d, n)).isDirectory()) continue;
      fs.rmSync(path.join(d, n), { recursive: true, force: true });
    }
  }
  fs.mkdirSync(path.join(root, 'mnt', 'scratch'), { recursive: true });
  fs.mkdirSync(path.join(root, 'var', 'lib', 'containers'), { recursive: true });

  const { stdout: pkgs } = await run('chroot', [root, 'dpkg-query', '-W', '-f', '${Package} ${Version}\n']);
  const usage = treeUsage(root);
  const size = imageSizeFor(usage.bytes);
  const inodes = Math.ceil(usage.inodes * 1.3) + 4096;
  const img = path.join(out, 'rootfs.ext4');
  progress?.(`imaging rootfs (${(usage.bytes / 2 ** 20).toFixed(0)} MiB used, ${(size / 2 ** 20).toFixed(0)} MiB image)`);
  fs.closeSync(fs.openSync(img, 'w'));
  fs.truncateSync(img, size);
  // No journal: the guest mounts it read-only; -m 0: no root reserve.
  await run('mkfs.ext4', ['-q', '-F', '-d', root, '-L', 'shoal-root', '-O', '^has_journal', '-m', '0', '-N', String(inodes), '-b', '4096', img]);
  fs.writeFileSync(
    path.join(out, 'rootfs.json'),
    JSON.stringify({ suite: recipe.suite, kernel: kernel.version, sizeBytes: size, usedBytes: usage.bytes, packages: pkgs.trim().split('\n') }, null, 2) + '\n',
  );
  fs.rmSync(root, { recursive: true, force: true });
}

export interface RootfsAsset {
  dir: string;
  hash: string;
  /** rootfs.ext4 */
  path: string;
  built: boolean;
}

export async function ensureRootfs(kernel: KernelAsset, opts: BuildOptions & { progress?: (m: string) => void } = {}): Promise<RootfsAsset> {
  const recipe = rootfsRecipe();
  const hash = rootfsHash(kernel, recipe);
  const { dir, built } = await ensureAsset('rootfs', hash, (tmp) => buildRootfs(tmp, kernel, recipe, opts.progress), opts);
  return { dir, hash, path: path.join(dir, 'rootfs.ext4'), built };
}
