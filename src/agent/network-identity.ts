/**
 * What a clone does to its network when a new host says hello: take its own identity where it
 * has one, and forget the source's neighbours and connections. In-process (rtnetlink and
 * sock_diag through the native addon): `ip` and `ss` were a process start each.
 */
import * as native from '../native/index';
import type { GuestNetworkIdentity } from '../protocol/messages';
import { attempt } from './attempt';

/**
 * A clone starts with its source's neighbour cache and TCP connections, whose peers (the
 * source's user-mode network, or its clients) are not this clone's: drop both, so the clone
 * learns its network afresh and its apps see resets instead of hanging on dead connections.
 * A clone with an identity of its own (bridged) takes its MAC and address first.
 */
export function forgetSourceNetworkState(log: (msg: string) => void, identity?: GuestNetworkIdentity): void {
  if (identity) attempt(log, 'taking the clone\'s network identity', () => takeNetworkIdentity(identity));
  attempt(log, 'flushing the neighbour cache', () => native.neighFlush());
  attempt(log, 'killing the source\'s TCP connections', () => native.tcpDestroyEstablished());
}

/**
 * Moves a link to a new MAC and IPv4 address with its default route (`ip link set address`,
 * `ip -4 addr flush`, `ip addr add`, `ip route replace default`), keeping its link-local IPv6.
 */
export function takeNetworkIdentity(identity: GuestNetworkIdentity, ifname = 'eth0'): void {
  checkNetworkIdentity(identity);
  native.linkSetMac(ifname, identity.mac);
  native.ipv4AddrFlush(ifname);
  native.ipv4AddrAdd(ifname, identity.address);
  native.ipv4DefaultRoute(ifname, identity.gateway);
}

/** The identity comes from the host over the agent link: check its shape before using it. */
export function checkNetworkIdentity(identity: GuestNetworkIdentity): void {
  const ipv4 = '(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)(?:\\.(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)){3}';
  const ok = typeof identity === 'object' && identity !== null
    && typeof identity.mac === 'string' && /^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/i.test(identity.mac)
    && typeof identity.address === 'string' && new RegExp(`^${ipv4}/(?:3[0-2]|[12]?\\d)$`).test(identity.address)
    && typeof identity.gateway === 'string' && new RegExp(`^${ipv4}$`).test(identity.gateway);
  if (!ok) throw new Error(`refusing a network identity ${JSON.stringify(identity).slice(0, 200)}`);
}
