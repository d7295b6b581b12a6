/**
 * Binds each bridged VM's TAP to the MAC and IPv4 address it was given, so that one guest cannot
 * speak for another on shoal0: no frames with another source MAC (which would also teach the
 * bridge's forwarding table to send the victim's traffic to the liar), no ARP claiming another's
 * address, no IPv4 from another source address.
 *
 * The rules live in one nftables table of the `bridge` family, `bridge shoal`:
 *
 *     chain prerouting (hook prerouting: every frame entering the bridge from a port, before the
 *                       bridge learns its source MAC or forwards/delivers it)
 *       iifname vmap @ports          a bound port jumps to its own chain
 *       iifname "shoal-*" drop       a shoal TAP without a binding carries nothing (fail closed)
 *     map ports  { "<tap>" : jump port_<tap> }
 *     chain port_<tap>               one per TAP, rewritten whole when a VM binds it
 *       ether saddr != MAC drop
 *       arp saddr ether MAC arp saddr ip ADDRESS accept
 *       ip saddr ADDRESS accept
 *       drop                         everything else: IPv6 (shoal's bridge is IPv4 only), VLAN
 *                                    tags, other ethertypes
 *
 * Guests get a static address (kernel command line / the agent for clones), so there is no DHCP
 * and no 0.0.0.0 source to allow. IPv6 is dropped rather than bound to the MAC's link-local
 * address: the bridge, its NAT and the guest's configuration are IPv4 only, so a guest has no use
 * for it, and its NDP would be one more protocol to police.
 *
 * Each bind or unbind is one `nft -f -` transaction (atomic), touches only its own TAP's chain and
 * map element, and is idempotent. Binding a TAP name rewrites whatever a dead VM with the same
 * name left there, so a stale rule never blocks a new VM. Unbinding removes the chain only if it
 * is still the unbinding VM's (its id is in the chain's first rule's comment): the `rm -f` of a
 * long-dead VM does not strip the rules of a new VM that reuses its TAP name.
 */
import { execFile } from 'node:child_process';
import { ShoalError } from '../util/errors';

export const BINDING_TABLE = 'shoal';

export interface PortBinding {
  /** The bridge port (a TAP; in tests a veth end). */
  port: string;
  mac: string;
  address: string;
  /** The VM id owning the binding (recorded in the rules). */
  owner: string;
}

/** Runs nft with arguments and optional stdin; tests run it in a network namespace of their own. */
export type NftRunner = (args: string[], input?: string) => Promise<string>;

export const runNft: NftRunner = (args, input) =>
  new Promise((resolve, reject) => {
    const child = execFile('nft', args, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const e = err as NodeJS.ErrnoException;
      if (e.code === 'ENOENT') return reject(new ShoalError('--network bridged needs nft on the host (Debian: apt-get install nftables)'));
      reject(new ShoalError(`nft ${args.join(' ')} failed: ${(stderr || e.message).trim().split('\n')[0]}`));
    });
    child.stdin?.end(input ?? '');
  });

const PORT_NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
const OWNER = /^[a-zA-Z0-9_.-]{1,64}$/;

/** Everything goes into an nft script: check it first, so nothing can inject a rule. */
function check(binding: PortBinding): void {
  if (!PORT_NAME.test(binding.port)) throw new ShoalError(`invalid bridge port name "${binding.port}"`);
  if (!MAC.test(binding.mac)) throw new ShoalError(`invalid MAC address "${binding.mac}"`);
  const ip = IPV4.exec(binding.address);
  if (!ip || ip.slice(1).some((octet) => Number(octet) > 255)) throw new ShoalError(`invalid IPv4 address "${binding.address}"`);
  if (!OWNER.test(binding.owner)) throw new ShoalError(`invalid VM id "${binding.owner}"`);
}

function chainOf(port: string): string {
  return `port_${port}`;
}

/** The shared part, re-stated by every bind: the table, the map and the dispatching chain. */
function baseScript(table: string): string[] {
  return [
    `add table bridge ${table}`,
    `add map bridge ${table} ports { type ifname : verdict; }`,
    `add chain bridge ${table} prerouting { type filter hook prerouting priority filter; policy accept; }`,
    `flush chain bridge ${table} prerouting`,
    `add rule bridge ${table} prerouting iifname vmap @ports`,
    `add rule bridge ${table} prerouting iifname "shoal-*" drop`,
  ];
}

/** The whole transaction that binds one port (exported for tests that read it). */
export function bindScript(binding: PortBinding, table = BINDING_TABLE): string {
  check(binding);
  const { port, mac, address, owner } = binding;
  const chain = `bridge ${table} ${chainOf(port)}`;
  return [
    ...baseScript(table),
    `add chain ${chain}`,
    `flush chain ${chain}`,
    `add rule ${chain} ether saddr != ${mac} drop comment "vm ${owner}"`,
    `add rule ${chain} arp saddr ether ${mac} arp saddr ip ${address} accept`,
    `add rule ${chain} ip saddr ${address} accept`,
    `add rule ${chain} drop`,
    `add element bridge ${table} ports { "${port}" : jump ${chainOf(port)} }`,
    '',
  ].join('\n');
}

/** Binds a bridge port to its VM's MAC and address (before the port carries any frame). */
export async function bindPort(binding: PortBinding, nft: NftRunner = runNft, table = BINDING_TABLE): Promise<void> {
  await nft(['-f', '-'], bindScript(binding, table));
}

/** The VM id a port's chain was bound for, or undefined if it has none. */
export async function portOwner(port: string, nft: NftRunner = runNft, table = BINDING_TABLE): Promise<string | undefined> {
  if (!PORT_NAME.test(port)) throw new ShoalError(`invalid bridge port name "${port}"`);
  let listing: string;
  try {
    listing = await nft(['list', 'chain', 'bridge', table, chainOf(port)]);
  } catch {
    return undefined; // no table or no chain: nothing bound
  }
  return /comment "vm ([a-zA-Z0-9_.-]+)"/.exec(listing)?.[1];
}

/**
 * Removes a port's binding if it belongs to `owner` (idempotent: nothing bound, or bound for
 * another VM, is left alone). The port then falls under the fail-closed rule if it still exists.
 */
export async function unbindPort(port: string, owner: string, nft: NftRunner = runNft, table = BINDING_TABLE): Promise<boolean> {
  if ((await portOwner(port, nft, table)) !== owner) return false;
  const chain = chainOf(port);
  await nft(['-f', '-'], [
    // The element may already be gone (a half-done earlier unbind): re-adding it first makes the
    // delete safe in one transaction; it refers to the same chain either way.
    `add element bridge ${table} ports { "${port}" : jump ${chain} }`,
    `delete element bridge ${table} ports { "${port}" }`,
    `delete chain bridge ${table} ${chain}`,
    '',
  ].join('\n'));
  return true;
}
