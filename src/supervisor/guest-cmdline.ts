/**
 * The kernel command line of one VM: the assets' base line plus what depends on the VMM and
 * on the VM (its transport to the agent, its hostname, how it powers off, its addresses).
 */
import type { NetAttachment } from '../network/mode';
import type { VmmKind } from '../vmm/backend';

/** Addresses guest-init configures on eth0 (bridged, and slirp4netns's fixed ones). */
export interface StaticAddress {
  address: string;
  prefixLength: number;
  gateway: string;
  nameserver: string;
}

export function guestCmdline(base: string, backend: VmmKind, hostname: string, attachment: NetAttachment = 'none', fixed?: StaticAddress): string {
  // QEMU's slirp has fixed addresses that guest-init knows; the others are given.
  let net = attachment === 'qemu-slirp' ? ' shoal.net=slirp' : '';
  if (fixed && (attachment === 'bridge' || attachment === 'namespace')) {
    net = ` shoal.net=static shoal.ip=${fixed.address}/${fixed.prefixLength} shoal.gw=${fixed.gateway} shoal.dns=${fixed.nameserver}`;
  }
  if (backend === 'firecracker') {
    // Firecracker has no ACPI power-off: the guest ends the VM by rebooting through the
    // keyboard controller (reboot=k), and the agent reaches the host over vsock.
    const line = base.replace(/\breboot=\S+/, 'reboot=k');
    return `${line} shoal.transport=vsock shoal.poweroff=reboot shoal.hostname=${hostname}${net}`;
  }
  return `${base} shoal.transport=serial shoal.hostname=${hostname}${net}`;
}
