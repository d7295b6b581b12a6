/**
 * What a clone does to its network when a new host says hello: take its own identity where it
 * has one, and forget the source's neighbours and connections.
 */
import { execFile } from 'node:child_process';
import type { GuestNetworkIdentity } from '../protocol/messages';

/**
 * A clone starts with its source's neighbour cache and TCP connections, whose peers (the
 * source's user-mode network, or its clients) are not this clone's: drop both, so the clone
 * learns its network afresh and its apps see resets instead of hanging on dead connections.
 * A clone with an identity of its own (bridged) takes its MAC and address first.
 */
export function forgetSourceNetworkState(log: (msg: string) => void, identity?: GuestNetworkIdentity): Promise<void> {
  const readdress = identity ? readdressScript(identity) : '';
  return new Promise((resolve) => {
    execFile('sh', ['-c', `${readdress}ip neigh flush all; ss -K state established >/dev/null 2>&1; true`], { timeout: 10_000 }, (err, _out, stderr) => {
      if (err || String(stderr).trim()) log(`taking the clone's network identity failed: ${String(stderr).trim() || err?.message}`);
      resolve();
    });
  });
}

/** Shell lines that move eth0 to a new MAC and IPv4 address, keeping its link-local IPv6. */
export function readdressScript(identity: GuestNetworkIdentity): string {
  const safe = /^[0-9a-fA-F:./]+$/;
  for (const value of [identity.mac, identity.address, identity.gateway]) {
    if (!safe.test(value)) throw new Error(`refusing a network identity with "${value}" in it`);
  }
  return [
    `ip link set eth0 address ${identity.mac}`,
    'ip -4 addr flush dev eth0',
    `ip addr add ${identity.address} dev eth0`,
    `ip route replace default via ${identity.gateway} dev eth0`,
    '',
  ].join('\n');
}
