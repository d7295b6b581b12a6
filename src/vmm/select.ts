/**
 * Picks the VMM backend: `--vmm qemu|firecracker`, or `auto` (Firecracker when its binary is
 * present and KVM passed the boot probe, else QEMU with KVM, else QEMU with TCG).
 */
import { ShoalError } from '../util/errors';
import type { Accelerator, VmmBackend, VmmKind } from './backend';
import { QemuBackend } from './qemu/backend';

export type VmmChoice = VmmKind | 'auto';

export function backendFor(kind: VmmKind): VmmBackend {
  switch (kind) {
    case 'qemu':
      return new QemuBackend();
    case 'firecracker':
      throw new ShoalError('the Firecracker backend is not wired in yet');
  }
}

export interface Selection {
  backend: VmmKind;
  accel: Accelerator;
  reason: string;
}

export async function selectBackend(choice: VmmChoice, probedAccel: Accelerator, probeReason: string): Promise<Selection> {
  if (choice === 'firecracker') {
    throw new ShoalError('the Firecracker backend is not wired in yet');
  }
  const qemu = new QemuBackend();
  const problem = await qemu.unavailableReason();
  if (problem) throw new ShoalError(problem);
  return { backend: 'qemu', accel: probedAccel, reason: choice === 'auto' ? `qemu with ${probedAccel}: ${probeReason}` : `qemu with ${probedAccel}` };
}
