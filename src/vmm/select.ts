/**
 * Picks the VMM backend: `--vmm qemu|firecracker`, or `auto` (Firecracker when its binary is
 * present and KVM passed the boot probe, else QEMU with KVM, else QEMU with TCG).
 */
import { ShoalError } from '../util/errors';
import type { Accelerator, VmmBackend, VmmKind } from './backend';
import path from 'node:path';
import { FirecrackerBackend, findFirecrackerBinary, findJailerBinary } from './firecracker/backend';
import { DEFAULT_CHROOT_BASE, jailLayout } from './firecracker/jailer';
import fs from 'node:fs';
import { QemuBackend } from './qemu/backend';

export type VmmChoice = VmmKind | 'auto';

/** `--jailer`: run Firecracker under its jailer, dropping to uid:gid in a chroot under chrootBaseDir. */
export interface JailerChoice {
  uid: number;
  gid: number;
  chrootBaseDir?: string;
}

/**
 * The jail directory of a jailed VM (`<chroot base>/<exec file name>/<id>`), which the jailer
 * leaves behind: its owner removes it when the VM is gone. Undefined without a Firecracker binary.
 */
export function jailDirOf(id: string, jailer: JailerChoice): string | undefined {
  const firecracker = findFirecrackerBinary().path;
  if (!firecracker) return undefined;
  // Named as the jailer names it: canonical binary and base (src/vmm/firecracker/launch.ts canonicalJailPaths).
  return jailLayout({ id, firecrackerBinary: canonical(firecracker), chrootBaseDir: canonical(jailer.chrootBaseDir ?? DEFAULT_CHROOT_BASE) }).jailDir;
}

/** Whether dir has the shape of VM id's jail (`<chroot base>/<exec name>/<id>`) under the jailer's chroot base. */
export function isJailOf(dir: string, id: string, jailer: JailerChoice): boolean {
  const base = canonical(jailer.chrootBaseDir ?? DEFAULT_CHROOT_BASE);
  return path.isAbsolute(dir) && path.normalize(dir) === dir && path.basename(dir) === id && path.dirname(path.dirname(dir)) === base;
}

function canonical(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

export function backendFor(kind: VmmKind, accel: Accelerator, jailer?: JailerChoice): VmmBackend {
  switch (kind) {
    case 'qemu':
      return new QemuBackend();
    case 'firecracker':
      return new FirecrackerBackend({
        kvmUsable: async () => accel === 'kvm',
        ...(jailer ? { jailer: { ...jailer, jailerBinary: findJailerBinary().path ?? 'jailer' } } : {}),
      });
  }
}

export interface Selection {
  backend: VmmKind;
  accel: Accelerator;
  /** One sentence saying what was chosen and why. */
  reason: string;
}

/** probedAccel/probeReason: the KVM boot probe's verdict recorded by `shoal setup`. */
export async function selectBackend(choice: VmmChoice, probedAccel: Accelerator, probeReason: string, jailer?: JailerChoice): Promise<Selection> {
  if (jailer && choice === 'qemu') throw new ShoalError('--jailer is Firecracker\'s jailer: it cannot be combined with --vmm qemu');
  if (choice === 'firecracker' || choice === 'auto') {
    const problem = await backendFor('firecracker', probedAccel, jailer).unavailableReason();
    const kvmProblem = probedAccel === 'kvm' ? null : `KVM cannot boot a guest here (${probeReason})`;
    if (!problem && !kvmProblem) return { backend: 'firecracker', accel: 'kvm', reason: `firecracker with kvm${jailer ? ', under the jailer' : ''}` };
    if (choice === 'firecracker' || jailer) throw new ShoalError(`cannot use Firecracker${jailer ? ' (needed by --jailer)' : ''}: ${problem ?? kvmProblem}`);
  }
  const problem = await backendFor('qemu', probedAccel).unavailableReason();
  if (problem) throw new ShoalError(problem);
  return { backend: 'qemu', accel: probedAccel, reason: `qemu with ${probedAccel}${probedAccel === 'tcg' ? ' (no usable KVM)' : ''}` };
}
