/**
 * Network modes and how each is attached on the host:
 * - `rootless` (default, no privileges): QEMU's own user-mode networking (slirp) on QEMU; on
 *   Firecracker, which has none, a TAP in a namespace of its own joined to slirp4netns.
 * - `slirp4netns`: that namespace attachment on either VMM (what rootless Firecracker uses; on
 *   QEMU it exercises the same path).
 * - `bridged` (root): a TAP on the host bridge shoal0, NAT by nftables (./bridge.ts).
 * - `ns:PATH` (root): a network namespace made by someone else (a CNI pod's), the VM's TAP in it
 *   mirrored to the namespace's interface, whose address the guest takes (./netns-attach.ts).
 * - `none`: no network device.
 * The guest's addresses in the slirp modes are slirp's fixed ones. In the slirp4netns namespace
 * the host's loopback is out of the guest's reach unless asked for (`:allow_host_loopback=true`);
 * QEMU's own slirp cannot withhold it (docs/security.md).
 */
import crypto from 'node:crypto';
import type { NetworkMode } from '../state/vm-record';
import { ShoalError } from '../util/errors';
import type { NetSpec, PortForward, VmmKind } from '../vmm/backend';
import { vmmTraits } from '../vmm/traits';
import { tapName } from './bridge';
import { NAMESPACE_GUEST_ADDRESS, NAMESPACE_TAP, namespaceNetworkUnavailable } from './namespace-network';
import { netnsPathProblem, NETNS_TAP } from './netns-attach';

export type { NetworkMode };
export const NETWORK_MODES: readonly NetworkMode[] = ['rootless', 'slirp4netns', 'bridged', 'ns', 'none'];

/** How a VM's network device reaches the world. */
export type NetAttachment = 'qemu-slirp' | 'namespace' | 'bridge' | 'netns' | 'none';

export const SLIRP_GUEST_ADDRESS = '10.0.2.15';
/** Where a guest on slirp (either kind) reaches the host's loopback. */
export const SLIRP_HOST_ADDRESS = '10.0.2.2';

export function parseNetworkMode(value: string): NetworkMode {
  if (value !== 'ns' && (NETWORK_MODES as readonly string[]).includes(value)) return value as NetworkMode;
  throw new ShoalError(`invalid --network "${value}": expected rootless, slirp4netns, bridged, none or ns:PATH`);
}

/** A `--network` value: the mode, and its options (podman's `slirp4netns:allow_host_loopback=true`). */
export interface NetworkChoice {
  mode: NetworkMode;
  /** Given explicitly: may the guest reach the host's loopback (as slirp's 10.0.2.2)? */
  allowHostLoopback?: boolean;
  /** `ns:PATH`: the network namespace to join. */
  netnsPath?: string;
}

/**
 * `MODE[:OPTION=VALUE[,...]]`. The one option, `allow_host_loopback=true|false`, is podman's for
 * slirp4netns and applies to the user-mode modes only (rootless, slirp4netns).
 */
export function parseNetwork(value: string): NetworkChoice {
  if (value.startsWith('ns:')) {
    const netnsPath = value.slice(3);
    const problem = netnsPathProblem(netnsPath);
    if (problem) throw new ShoalError(`invalid --network "${value.slice(0, 200)}": ${problem}`);
    return { mode: 'ns', netnsPath };
  }
  const colon = value.indexOf(':');
  const mode = parseNetworkMode(colon < 0 ? value : value.slice(0, colon));
  const choice: NetworkChoice = { mode };
  if (colon < 0) return choice;
  for (const option of value.slice(colon + 1).split(',')) {
    const match = /^allow_host_loopback=(true|false)$/.exec(option);
    if (!match) throw new ShoalError(`invalid --network "${value}": unknown option "${option}" (expected allow_host_loopback=true or false)`);
    if (mode !== 'rootless' && mode !== 'slirp4netns') throw new ShoalError(`invalid --network "${value}": allow_host_loopback applies to rootless and slirp4netns only`);
    choice.allowHostLoopback = match[1] === 'true';
  }
  return choice;
}

export function attachmentFor(mode: NetworkMode, backend: VmmKind): NetAttachment {
  if (mode === 'rootless') return vmmTraits(backend).userModeNetworking ? 'qemu-slirp' : 'namespace';
  if (mode === 'slirp4netns') return 'namespace';
  if (mode === 'ns') return 'netns';
  return mode === 'bridged' ? 'bridge' : 'none';
}

/** Fails early (for runs and clones alike) for combinations shoal cannot provide, or this host lacks. */
export function checkNetworkSupport(mode: NetworkMode, backend: VmmKind, forwards: PortForward[], options: { jailer?: boolean; allowHostLoopback?: boolean } = {}): void {
  if (mode === 'none' && forwards.length > 0) throw new ShoalError('--publish needs a network: it cannot be combined with --network none');
  if (options.allowHostLoopback === false && attachmentFor(mode, backend) === 'qemu-slirp') {
    // QEMU 7.2's -netdev user has no such switch (restrict=on would cut all outbound traffic).
    throw new ShoalError(`--network ${mode}:allow_host_loopback=false is not possible on ${backend}: its user-mode network always lets the guest reach the host's loopback; use --network slirp4netns`);
  }
  if (mode === 'ns') {
    if (process.getuid?.() !== 0) throw new ShoalError('--network ns:PATH needs root (it adds a TAP and tc filters in that namespace)');
    // The namespace's address is the pod's own: it is reached directly, nothing to forward.
    if (forwards.length > 0) throw new ShoalError('--publish cannot be combined with --network ns:PATH: the VM answers at the namespace\'s own address');
    if (options.jailer) throw new ShoalError('--jailer cannot be combined with --network ns:PATH');
  }
  if (mode === 'bridged' && process.getuid?.() !== 0) {
    throw new ShoalError('--network bridged needs root (it creates a TAP device and NAT rules); use --network rootless');
  }
  if (attachmentFor(mode, backend) === 'namespace') {
    // The jailer drops to its own uid, which the namespace's user mapping does not know.
    if (options.jailer) throw new ShoalError(`--jailer cannot be combined with --network ${mode}: use --network bridged (the jailer runs as root anyway) or none`);
    const missing = namespaceNetworkUnavailable();
    if (missing) throw new ShoalError(`--network ${mode} on ${backend}: ${missing}`);
  }
}

/** A locally administered, unicast MAC derived from the VM id. */
export function macFor(id: string): string {
  const bytes = crypto.createHash('sha256').update(id).digest().subarray(0, 4);
  return ['02', 'fc', ...[...bytes].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** The network device of a VM; a namespace attachment's namespacePid is filled in once it exists. */
export function netSpecFor(attachment: NetAttachment, id: string, forwards: PortForward[]): NetSpec | undefined {
  if (attachment === 'bridge') return { mac: macFor(id), tap: tapName(id) };
  if (attachment === 'namespace') return { mac: macFor(id), tap: NAMESPACE_TAP };
  // The MAC is the namespace interface's (the supervisor sets it, with the namespace's path).
  if (attachment === 'netns') return { mac: macFor(id), tap: NETNS_TAP };
  if (attachment === 'qemu-slirp') return { mac: macFor(id), userMode: { forwards } };
  return undefined;
}

/** What `shoal ls --json` reports of a VM's network (a bridged VM's address is its own). */
export function guestAddress(attachment: NetAttachment, bridgedAddress?: string, netnsAddress?: string): string | null {
  if (attachment === 'bridge') return bridgedAddress ?? null;
  if (attachment === 'netns') return netnsAddress ?? null;
  if (attachment === 'namespace') return NAMESPACE_GUEST_ADDRESS;
  return attachment === 'qemu-slirp' ? SLIRP_GUEST_ADDRESS : null;
}

/** Does the guest reach the host's loopback (as slirp's 10.0.2.2)? QEMU's own slirp always lets it. */
export function reachesHostLoopback(attachment: NetAttachment, allowHostLoopback: boolean | undefined): boolean {
  if (attachment === 'qemu-slirp') return true;
  return attachment === 'namespace' && allowHostLoopback === true;
}
