/**
 * What differs between the VMMs, answered by name, so code above src/vmm asks "does this VMM
 * have user-mode networking?" instead of comparing backend names. Static per kind: a record or
 * a snapshot manifest knows its VMM's kind without a backend instance.
 */
import type { VmmKind } from './backend';

export interface VmmTraits {
  /** Which of the kernels `shoal setup` extracted it boots: QEMU the bzImage, Firecracker the ELF. */
  readonly kernelImage: 'vmlinuz' | 'vmlinux';
  /** Has user-mode networking of its own (QEMU's slirp); without it, rootless means a slirp4netns namespace. */
  readonly userModeNetworking: boolean;
  /** The image cache and startup snapshots (restores of shared-memory snapshots taken by the supervisor). */
  readonly imageCache: boolean;
  /** Restores memory through a `snapshot serve` page server (Firecracker's Uffd backend, `--pid`). */
  readonly uffdRestore: boolean;
  /** Snapshots of a VM under the jailer: its snapshot files would be written inside the chroot, which shoal does not collect yet. */
  readonly jailedSnapshots: boolean;
  /**
   * The assets' base kernel command line with what this VMM's guest needs: how the agent
   * reaches the host (shoal.transport) and how the guest powers the VM off.
   */
  guestCmdline(base: string): string;
}

const QEMU: VmmTraits = {
  kernelImage: 'vmlinuz',
  userModeNetworking: true,
  imageCache: true,
  uffdRestore: false,
  jailedSnapshots: true,
  guestCmdline: (base) => `${base} shoal.transport=serial`,
};

const FIRECRACKER: VmmTraits = {
  kernelImage: 'vmlinux',
  userModeNetworking: false,
  imageCache: false,
  uffdRestore: true,
  jailedSnapshots: false,
  // Firecracker has no ACPI power-off: the guest ends the VM by rebooting through the keyboard
  // controller (reboot=k), and the agent reaches the host over vsock.
  guestCmdline: (base) => `${base.replace(/\breboot=\S+/, 'reboot=k')} shoal.transport=vsock shoal.poweroff=reboot`,
};

export function vmmTraits(kind: VmmKind): VmmTraits {
  return kind === 'firecracker' ? FIRECRACKER : QEMU;
}
