/**
 * The kernel command line of one VM: the assets' base line plus what depends on the VMM (its
 * transport to the agent, how it powers off: the VMM's traits say) and on the VM (its
 * hostname, its addresses).
 */
import type { NetAttachment } from '../network/mode';
import type { VmmTraits } from '../vmm/traits';

/** Addresses guest-init configures on eth0 (bridged, a pod's namespace, and slirp4netns's fixed ones). */
export interface StaticAddress {
  address: string;
  prefixLength: number;
  /** Absent: no default route (a namespace whose interface has none). */
  gateway?: string;
  nameserver: string;
}

export function vmKernelCmdline(base: string, vmm: VmmTraits, hostname: string, attachment: NetAttachment = 'none', fixed?: StaticAddress): string {
  // QEMU's slirp has fixed addresses that guest-init knows; the others are given.
  let net = attachment === 'qemu-slirp' ? ' shoal.net=slirp' : '';
  if (fixed && (attachment === 'bridge' || attachment === 'namespace' || attachment === 'netns')) {
    net = ` shoal.net=static shoal.ip=${fixed.address}/${fixed.prefixLength}${fixed.gateway ? ` shoal.gw=${fixed.gateway}` : ''} shoal.dns=${fixed.nameserver}`;
  }
  return `${vmm.guestCmdline(base)} shoal.hostname=${hostname}${net}`;
}
