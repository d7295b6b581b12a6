/**
 * Network modes and what each gives a VM. `rootless` on QEMU is user-mode networking (slirp):
 * no privileges, the host's resolver through slirp's DNS, published ports as host forwards.
 * The guest's addresses in that mode are slirp's fixed ones.
 */
import crypto from 'node:crypto';
import { ShoalError } from '../util/errors';
import type { NetSpec, PortForward, VmmKind } from '../vmm/backend';
import { tapName } from './bridge';

export type NetworkMode = 'rootless' | 'bridged' | 'none';

export const SLIRP_GUEST_ADDRESS = '10.0.2.15';
/** Where a rootless (slirp) guest reaches the host's loopback. */
export const SLIRP_HOST_ADDRESS = '10.0.2.2';

export function parseNetworkMode(value: string): NetworkMode {
  if (value === 'rootless' || value === 'bridged' || value === 'none') return value;
  throw new ShoalError(`invalid --network "${value}": expected rootless, bridged or none`);
}

/** Fails early for combinations shoal cannot provide yet. */
export function checkNetworkSupport(mode: NetworkMode, backend: VmmKind, forwards: PortForward[]): void {
  if (mode === 'none' && forwards.length > 0) throw new ShoalError('--publish needs a network: it cannot be combined with --network none');
  if (mode === 'bridged') {
    if (backend !== 'qemu') throw new ShoalError('--network bridged is not implemented for Firecracker yet; use --vmm qemu');
    if (process.getuid?.() !== 0) throw new ShoalError('--network bridged needs root (it creates a TAP device and NAT rules); use --network rootless');
  }
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
  if (mode === 'bridged') return { mac: macFor(id), tap: tapName(id) };
  if (mode !== 'rootless') return undefined;
  return { mac: macFor(id), userMode: { forwards } };
}

/** What `shoal ls --json` reports of a VM's network (a bridged VM's address is its own). */
export function guestAddress(mode: NetworkMode, bridgedAddress?: string): string | null {
  if (mode === 'bridged') return bridgedAddress ?? null;
  return mode === 'rootless' ? SLIRP_GUEST_ADDRESS : null;
}
