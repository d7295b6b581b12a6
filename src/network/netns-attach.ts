/**
 * `--network ns:PATH` (podman's spelling): the VM joins a network namespace someone else made,
 * typically CNI's for a Kubernetes pod (containerd's CRI plugin creates it and runs the bridge
 * plugin in it). As Kata Containers does it, the VMM runs in that namespace with a TAP of its
 * own, and tc mirrors every frame between the TAP and the namespace's interface (CNI's eth0):
 *
 *     pod netns:   eth0 (veth, CNI's address) ──ingress: mirred redirect──▶ tap
 *                  tap ──ingress: mirred redirect──▶ eth0
 *
 * The guest takes eth0's MAC and IPv4 address, prefix and default gateway, so to the rest of the
 * network the pod answers at its CNI address as if the namespace's own stack did (which, with
 * every frame redirected at ingress, sees none). Nothing here outlives the VM: the TAP goes with
 * the VMM (QEMU's is not persistent; Firecracker's is deleted), the two ingress qdiscs are
 * removed at the end, and the namespace belongs to whoever made it.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { NetnsInterface } from '../state/vm-record';
import { ShoalError } from '../util/errors';

const execFileAsync = promisify(execFile);

/** The VM's TAP inside the namespace. */
export const NETNS_TAP = 'shoal-tap0';
const COMMAND_TIMEOUT_MS = 10_000;
/** A kernel interface name as it may appear in a tc batch line. */
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;
const MAX_OUTPUT = 1024 * 1024;

export type { NetnsInterface };

/**
 * A namespace path as given by the user or containerd: absolute, normalized, no control
 * characters, and an nsfs file (a bind mount of a network namespace, or /proc/PID/ns/net).
 * Returns the problem, or null.
 */
export function netnsPathProblem(value: string): string | null {
  if (value.length === 0 || value.length > 1024) return 'the namespace path must be 1 to 1024 characters';
  if (!path.isAbsolute(value)) return `the namespace path must be absolute: ${JSON.stringify(value)}`;
  if (path.normalize(value) !== value || value.includes('/../') || /[\0-\x1f\x7f]/.test(value)) return `the namespace path is not a plain absolute path: ${JSON.stringify(value)}`;
  return null;
}

/** Checked where the VM's network is prepared: the file must exist and be a network namespace. */
export function assertNetnsFile(netnsPath: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(netnsPath);
  } catch {
    throw new ShoalError(`no network namespace at ${netnsPath}`);
  }
  // nsfs files are empty regular files on the nsfs device; a directory or a data file is not one.
  if (!stat.isFile() || stat.size !== 0) throw new ShoalError(`${netnsPath} is not a network namespace`);
}

function inNetns(netnsPath: string, argv: string[], input?: string): Promise<string> {
  const child = execFileAsync('nsenter', [`--net=${netnsPath}`, '--', ...argv], { timeout: COMMAND_TIMEOUT_MS, maxBuffer: MAX_OUTPUT, encoding: 'utf8' });
  if (input !== undefined) {
    child.child.stdin?.end(input);
  }
  return child.then((r) => r.stdout, (err: Error & { stderr?: string }) => {
    const detail = (err.stderr ?? err.message).trim().split('\n')[0] ?? '';
    throw new ShoalError(`in network namespace ${netnsPath}: ${argv.slice(0, 3).join(' ')} failed: ${detail.slice(0, 300)}`);
  });
}

interface IpAddrJson {
  ifname?: unknown;
  address?: unknown;
  mtu?: unknown;
  link_type?: unknown;
  addr_info?: Array<{ family?: unknown; local?: unknown; prefixlen?: unknown; scope?: unknown }>;
}

/**
 * The namespace's interface the VM takes over: `wanted` if named, else the one non-loopback
 * Ethernet interface with a global IPv4 address (CNI's eth0). Its output is the kernel's, read
 * through `ip -j` and checked field by field.
 */
export async function readNetnsInterface(netnsPath: string, wanted?: string): Promise<NetnsInterface> {
  const links = JSON.parse(await inNetns(netnsPath, ['ip', '-j', 'address', 'show'])) as IpAddrJson[];
  if (!Array.isArray(links)) throw new ShoalError(`in network namespace ${netnsPath}: unexpected output of ip address`);
  const candidates: NetnsInterface[] = [];
  for (const link of links) {
    if (typeof link.ifname !== 'string' || !IFNAME.test(link.ifname) || link.ifname === NETNS_TAP || link.link_type !== 'ether') continue;
    if (wanted !== undefined && link.ifname !== wanted) continue;
    const v4 = (link.addr_info ?? []).find((a) => a.family === 'inet' && a.scope === 'global' && typeof a.local === 'string' && typeof a.prefixlen === 'number');
    if (!v4 || typeof link.address !== 'string' || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(link.address)) continue;
    candidates.push({ name: link.ifname, mac: link.address, address: v4.local as string, prefixLength: v4.prefixlen as number, gateway: null, mtu: typeof link.mtu === 'number' ? link.mtu : 1500 });
  }
  if (candidates.length === 0) throw new ShoalError(`network namespace ${netnsPath} has no ${wanted ? `interface ${wanted} with` : 'Ethernet interface with'} an IPv4 address for the VM to take`);
  if (candidates.length > 1) throw new ShoalError(`network namespace ${netnsPath} has several interfaces with IPv4 addresses (${candidates.map((c) => c.name).join(', ')}): name one`);
  const chosen = candidates[0]!;
  const routes = JSON.parse(await inNetns(netnsPath, ['ip', '-j', '-4', 'route', 'show', 'default'])) as Array<{ gateway?: unknown; dev?: unknown }>;
  const route = Array.isArray(routes) ? routes.find((r) => r.dev === chosen.name && typeof r.gateway === 'string') : undefined;
  if (route && /^\d{1,3}(\.\d{1,3}){3}$/.test(route.gateway as string)) chosen.gateway = route.gateway as string;
  return chosen;
}

/** Firecracker opens its TAP by name: make it in the namespace first (QEMU makes its own). */
export async function createNetnsTap(netnsPath: string): Promise<void> {
  await inNetns(netnsPath, ['ip', 'tuntap', 'add', 'dev', NETNS_TAP, 'mode', 'tap']);
}

/** Once the VMM holds the TAP: up, the interface's MTU, and every frame mirrored both ways. */
export async function mirrorTap(netnsPath: string, iface: NetnsInterface): Promise<void> {
  await inNetns(netnsPath, ['ip', 'link', 'set', 'dev', NETNS_TAP, 'mtu', String(iface.mtu), 'up']);
  const batch = [
    `qdisc add dev ${iface.name} ingress`,
    `filter add dev ${iface.name} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev ${NETNS_TAP}`,
    `qdisc add dev ${NETNS_TAP} ingress`,
    `filter add dev ${NETNS_TAP} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev ${iface.name}`,
  ].join('\n');
  await inNetns(netnsPath, ['tc', '-batch', '-'], `${batch}\n`);
}

/** The interface gets its own traffic back (the TAP's qdisc goes with the TAP). Best effort: the namespace may be gone. */
export async function unmirrorTap(netnsPath: string, iface: NetnsInterface): Promise<void> {
  if (!fs.existsSync(netnsPath)) return;
  await inNetns(netnsPath, ['tc', 'qdisc', 'del', 'dev', iface.name, 'ingress']).catch(() => undefined);
  await inNetns(netnsPath, ['ip', 'link', 'del', 'dev', NETNS_TAP]).catch(() => undefined);
}
