/**
 * `shoal setup`: makes sure the guest kernel, vmlinux, initramfs and rootfs
 * exist in the cache and that the accelerator has been decided, and records
 * the current set in `<cache>/assets.json` for loadAssets().
 *
 * A cached run touches no network and runs no apt: the resolved kernel
 * package version is remembered in assets.json and re-resolved only on the
 * first setup or with force.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Accelerator } from '../vmm/backend';
import { ShoalError } from '../util/errors';
import { cacheDir } from '../util/paths';
import { writeFileAtomic } from '../state/atomic';
import { isBuilt, pruneAssets } from './cache';
import { ensureInitramfs, type AgentPayload } from './initramfs';
import { ensureKernel, loadKernel, resolveKernelPackage, type KernelAsset, type KernelPackage } from './kernel';
import { ensureAccel, readAccel } from './probe';
import { ensureRootfs } from './rootfs';
import { BASE_CMDLINE, guestCmdline } from './cmdline';

export { BASE_CMDLINE, guestCmdline, hostTscKhz } from './cmdline';

export interface GuestAssets {
  /** uname -r of the guest kernel. */
  kernelVersion: string;
  /** bzImage (QEMU). */
  vmlinuz: string;
  /** Uncompressed ELF kernel (Firecracker). */
  vmlinux: string;
  /** initramfs, gzipped newc cpio. */
  initrd: string;
  /** Read-only ext4 root image (vda). */
  rootfs: string;
  accel: Accelerator;
  accelReason: string;
  /** With KVM: the CPU feature changes the boot probe needed (see AccelRecord.kvmCpuFlags). */
  kvmCpuFlags?: string[];
  /** The cache root the assets live in. */
  dir: string;
  /**
   * The kernel command line to boot with: BASE_CMDLINE plus what this host
   * needs for `accel` (under TCG, tsc_early_khz; see cmdline.ts). The VMM
   * layer appends shoal.* keys.
   */
  cmdline: string;
}

interface Manifest {
  version: 1;
  kernelPackage: KernelPackage;
  kernelHash: string;
  initramfsHash: string;
  rootfsHash: string;
  updatedAt: string;
}

function manifestPath(root: string): string {
  return path.join(root, 'assets.json');
}

function readManifest(root: string): Manifest | null {
  try {
    const m = JSON.parse(fs.readFileSync(manifestPath(root), 'utf8')) as Manifest;
    if (m.version === 1 && m.kernelPackage && m.kernelHash) return m;
  } catch {
    /* absent */
  }
  return null;
}

export interface EnsureAssetsOptions {
  /** Re-resolve the kernel package, rebuild every asset and re-probe KVM. */
  force?: boolean;
  progress?: (msg: string) => void;
  /** Cache root (default cacheDir()). */
  root?: string;
  /** Agent payload for the initramfs (default: this checkout's dist/ and native/). */
  payload?: AgentPayload;
}

/** Builds whatever is missing and returns the guest assets. Idempotent; well under a second when cached. */
export async function ensureAssets(opts: EnsureAssetsOptions = {}): Promise<GuestAssets> {
  const root = opts.root ?? cacheDir();
  const progress = opts.progress ?? (() => undefined);
  const force = opts.force ?? false;
  const t0 = Date.now();
  fs.mkdirSync(root, { recursive: true, mode: 0o755 });

  const prev = readManifest(root);
  let pkg: KernelPackage;
  if (prev && !force) pkg = prev.kernelPackage;
  else {
    progress('resolving the kernel package');
    pkg = await resolveKernelPackage(progress);
  }
  const common = { root, force, progress, onWait: (o: { pid: number }) => progress(`waiting for another shoal setup (pid ${o.pid})`) };

  const kernel = await ensureKernel(pkg, common);
  if (kernel.built) progress(`kernel ${kernel.version} ready (${kernel.dir})`);
  const initramfs = await ensureInitramfs(kernel, { ...common, ...(opts.payload ? { payload: opts.payload } : {}) });
  if (initramfs.built) {
    progress(`initramfs ready (${initramfs.path})`);
    // Each agent change makes a new initramfs: keep the current one and a few recent ones.
    pruneAssets('initramfs', initramfs.hash, 3, root);
  }
  const rootfs = await ensureRootfs(kernel, common);
  if (rootfs.built) progress(`rootfs ready (${rootfs.path})`);
  const accel = await ensureAccel({
    kernel: kernel.vmlinuz,
    initrd: initramfs.path,
    kernelHash: kernel.hash,
    baseCmdline: BASE_CMDLINE,
    force,
    root,
    progress,
  });

  const next: Manifest = {
    version: 1,
    kernelPackage: pkg,
    kernelHash: kernel.hash,
    initramfsHash: initramfs.hash,
    rootfsHash: rootfs.hash,
    updatedAt: new Date().toISOString(),
  };
  if (
    !prev ||
    prev.kernelHash !== next.kernelHash ||
    prev.initramfsHash !== next.initramfsHash ||
    prev.rootfsHash !== next.rootfsHash ||
    prev.kernelPackage.version !== pkg.version
  ) {
    writeFileAtomic(manifestPath(root), JSON.stringify(next, null, 2) + '\n', 0o644); // public, like the assets it names: unprivileged users boot VMs from this cache
  } else {
    // A manifest an earlier shoal wrote 0600 would keep unprivileged users from booting.
    fs.chmodSync(manifestPath(root), 0o644);
  }
  if (kernel.built || initramfs.built || rootfs.built || accel.probed) {
    progress(`guest assets ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
  return {
    kernelVersion: kernel.version,
    vmlinuz: kernel.vmlinuz,
    vmlinux: kernel.vmlinux,
    initrd: initramfs.path,
    rootfs: rootfs.path,
    accel: accel.accel,
    accelReason: accel.reason,
    ...(accel.kvmCpuFlags ? { kvmCpuFlags: accel.kvmCpuFlags } : {}),
    dir: root,
    cmdline: guestCmdline(accel.accel),
  };
}

/** The kernel asset recorded by the last successful setup (for building test initramfs variants). */
export function currentKernel(root: string = cacheDir()): KernelAsset {
  const m = readManifest(root);
  if (!m || !isBuilt('kernel', m.kernelHash, root)) throw new ShoalError('guest assets missing: run `shoal setup`');
  return loadKernel(path.join(root, `kernel-${m.kernelHash}`), m.kernelHash);
}

/**
 * The assets recorded by the last successful setup, without building
 * anything. Note the initramfs is the one built then: after changing the
 * agent, run ensureAssets() (fast: only the initramfs is rebuilt).
 */
export function loadAssets(root: string = cacheDir()): GuestAssets {
  const missing = new ShoalError('guest assets missing: run `shoal setup`');
  const m = readManifest(root);
  if (!m) throw missing;
  if (!isBuilt('kernel', m.kernelHash, root) || !isBuilt('initramfs', m.initramfsHash, root) || !isBuilt('rootfs', m.rootfsHash, root)) {
    throw missing;
  }
  const accel = readAccel(root);
  if (!accel || accel.kernelHash !== m.kernelHash) throw missing;
  const kernel = currentKernel(root);
  return {
    kernelVersion: kernel.version,
    vmlinuz: kernel.vmlinuz,
    vmlinux: kernel.vmlinux,
    initrd: path.join(root, `initramfs-${m.initramfsHash}`, 'initrd.gz'),
    rootfs: path.join(root, `rootfs-${m.rootfsHash}`, 'rootfs.ext4'),
    accel: accel.accel,
    accelReason: accel.reason,
    ...(accel.kvmCpuFlags ? { kvmCpuFlags: accel.kvmCpuFlags } : {}),
    dir: root,
    cmdline: guestCmdline(accel.accel),
  };
}
