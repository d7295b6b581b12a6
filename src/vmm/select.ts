/**
 * Picks the VMM backend: `--vmm qemu|firecracker`, or `auto` (Firecracker when its binary is
 * present and KVM passed the boot probe, else QEMU with KVM, else QEMU with TCG).
 */
import { ShoalError } from '../util/errors';
import type { Accelerator, VmmBackend, VmmKind } from './backend';
import { FirecrackerBackend } from './firecracker/backend';
import { QemuBackend } from './qemu/backend';

export type VmmChoice = VmmKind | 'auto';

export function backendFor(kind: VmmKind, accel: Accelerator): VmmBackend {
  switch (kind) {
    case 'qemu':
      return new QemuBackend();
    case 'firecracker':
      return new FirecrackerBackend({ kvmUsable: async () => accel === 'kvm' });
  }
}

export interface Selection {
  backend: VmmKind;
  accel: Accelerator;
  /** One sentence saying what was chosen and why. */
  reason: string;
}

/** probedAccel/probeReason: the KVM boot probe's verdict recorded by `shoal setup`. */
export async function selectBackend(choice: VmmChoice, probedAccel: Accelerator, probeReason: string): Promise<Selection> {
  if (choice === 'firecracker' || choice === 'auto') {
    const problem = await backendFor('firecracker', probedAccel).unavailableReason();
    const kvmProblem = probedAccel === 'kvm' ? null : `KVM cannot boot a guest here (${probeReason})`;
    if (!problem && !kvmProblem) return { backend: 'firecracker', accel: 'kvm', reason: 'firecracker with kvm' };
    if (choice === 'firecracker') throw new ShoalError(`cannot use Firecracker: ${problem ?? kvmProblem}`);
  }
  const problem = await backendFor('qemu', probedAccel).unavailableReason();
  if (problem) throw new ShoalError(problem);
  return { backend: 'qemu', accel: probedAccel, reason: `qemu with ${probedAccel}${probedAccel === 'tcg' ? ' (no usable KVM)' : ''}` };
}
