/**
 * The kernel command line of one VM: the assets' base line plus what depends on the VMM and
 * on the VM (its transport to the agent, its hostname, how it powers off).
 */
import type { NetworkMode } from '../network/mode';
import type { VmmKind } from '../vmm/backend';

/** A bridged VM's addresses, which guest-init configures on eth0. */
export interface StaticAddress {
  address: string;
  prefixLength: number;
  gateway: string;
  nameserver: string;
}

export function guestCmdline(base: string, backend: VmmKind, hostname: string, network: NetworkMode = 'none', bridged?: StaticAddress): string {
  // On QEMU, rootless networking is slirp, whose fixed addresses guest-init configures.
  let net = backend === 'qemu' && network === 'rootless' ? ' shoal.net=slirp' : '';
  if (network === 'bridged' && bridged) {
    net = ` shoal.net=static shoal.ip=${bridged.address}/${bridged.prefixLength} shoal.gw=${bridged.gateway} shoal.dns=${bridged.nameserver}`;
  }
  if (backend === 'firecracker') {
    // Firecracker has no ACPI power-off: the guest ends the VM by rebooting through the
    // keyboard controller (reboot=k), and the agent reaches the host over vsock.
    const line = base.replace(/\breboot=\S+/, 'reboot=k');
    return `${line} shoal.transport=vsock shoal.poweroff=reboot shoal.hostname=${hostname}${net}`;
  }
  return `${base} shoal.transport=serial shoal.hostname=${hostname}${net}`;
}
