/**
 * What differs between the VMMs, answered by name, so code above src/vmm asks "does this VMM
 * have user-mode networking?" instead of comparing backend names. Static per kind: a record or
 * a snapshot manifest knows its VMM's kind without a backend instance.
 */
import { ShoalError } from '../util/errors';
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
  guestCmdline: (base) => `${base} ${qemuAgentLinkWords()}`,
};

/**
 * The guest words of QEMU's agent link. `SHOAL_QEMU_AGENT_LINK=vsock-relay` (for tests) has the
 * agent serve AF_VSOCK exactly as under Firecracker, reached through a relay in the guest that
 * carries the virtio-serial link over the kernel's vsock loopback (src/agent/vsock-relay.ts):
 * the guest half of the Firecracker path then runs in a real guest kernel, where no Firecracker
 * can run. The host side is QEMU's as ever. Part of the command line, so image cache entries and
 * snapshots keep their link.
 */
export function qemuAgentLinkWords(link: string = process.env.SHOAL_QEMU_AGENT_LINK ?? 'serial'): string {
  if (link === 'serial') return 'shoal.transport=serial';
  if (link === 'vsock-relay') return 'shoal.transport=vsock shoal.vsock_relay=serial';
  throw new ShoalError(`SHOAL_QEMU_AGENT_LINK must be serial or vsock-relay, not ${JSON.stringify(link.slice(0, 40))}`);
}

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
