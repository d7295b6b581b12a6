/**
 * Network modes and what each gives a VM. `rootless` on QEMU is user-mode networking (slirp):
 * no privileges, the host's resolver through slirp's DNS, published ports as host forwards.
 * The guest's addresses in that mode are slirp's fixed ones.
 */
import crypto from 'node:crypto';
import { ShoalError } from '../util/errors';
import type { NetSpec, PortForward, VmmKind } from '../vmm/backend';

export type NetworkMode = 'rootless' | 'bridged' | 'none';

export const SLIRP_GUEST_ADDRESS = '10.0.2.15';

export function parseNetworkMode(value: string): NetworkMode {
  if (value === 'rootless' || value === 'bridged' || value === 'none') return value;
  throw new ShoalError(`invalid --network "${value}": expected rootless, bridged or none`);
}

/** Fails early for combinations shoal cannot provide yet. */
export function checkNetworkSupport(mode: NetworkMode, backend: VmmKind, forwards: PortForward[]): void {
  if (mode === 'none' && forwards.length > 0) throw new ShoalError('--publish needs a network: it cannot be combined with --network none');
  if (mode === 'bridged') throw new ShoalError('--network bridged is not implemented yet; use --network rootless');
  if (mode === 'rootless' && backend === 'firecracker') {
    throw new ShoalError('--network rootless is not implemented for Firecracker yet; use --network none');
  }
}

/** A locally administered, unicast MAC derived from the VM id. */
export function macFor(id: string): string {
  const bytes = crypto.createHash('sha256').update(id).digest().subarray(0, 4);
  return ['02', 'fc', ...[...bytes].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

export function netSpecFor(mode: NetworkMode, id: string, forwards: PortForward[]): NetSpec | undefined {
  if (mode !== 'rootless') return undefined;
  return { mac: macFor(id), userMode: { forwards } };
}

/** What `shoal ls --json` reports of a VM's network. */
export function guestAddress(mode: NetworkMode): string | null {
  return mode === 'rootless' ? SLIRP_GUEST_ADDRESS : null;
}
