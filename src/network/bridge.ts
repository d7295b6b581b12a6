/**
 * `--network bridged` (root): each VM gets a TAP device on the host bridge `shoal0`, an address
 * of its subnet, and reaches out through NAT (nftables masquerade).
 *
 * What is shared and what is per VM, and why nothing of a VM can leak:
 * - Shared, created once and kept (like podman's default bridge): the bridge with the gateway
 *   address, IPv4 forwarding, and the nftables table `ip shoal` (masquerade for the subnet, and
 *   forwarding for it). Re-created atomically in one nft transaction, so concurrent starts do not
 *   duplicate rules.
 * - Per VM: the TAP and its binding. QEMU creates the TAP (non-persistent), so it vanishes with
 *   the QEMU process, even after kill -9 of the supervisor (QEMU dies with it). Bridge ports are
 *   isolated: VMs reach the outside and the host, not each other. The binding (an nftables
 *   `bridge` rule set, ./port-binding.ts) lets the TAP carry only its VM's MAC and address.
 * - The VM's address is claimed by an O_EXCL file (CLAIMS_DIR) and released when the VM ends; a
 *   claim whose supervisor is gone is taken over.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { createWhole } from '../state/atomic';
import { ensurePrivateDir } from '../util/private-fs';
import { ShoalError } from '../util/errors';
import { isAlive, processStartTime } from '../util/process';

const execFileAsync = promisify(execFile);

export const BRIDGE = 'shoal0';
/** The bridge's subnet: a /24 of the 10.0.0.0/8 private range that container tools leave alone by default. */
export const SUBNET_PREFIX = '10.77.0';
export const GATEWAY = `${SUBNET_PREFIX}.1`;
export const PREFIX_LENGTH = 24;

/** The TAP device of a VM: Linux names are at most 15 characters. */
export function tapName(id: string): string {
  return `shoal-${id.slice(0, 9)}`;
}

async function run(command: string, args: string[], input?: string): Promise<string> {
  try {
    if (input === undefined) return (await execFileAsync(command, args)).stdout;
    return await new Promise<string>((resolve, reject) => {
      const child = execFile(command, args, (err, stdout) => (err ? reject(err) : resolve(stdout)));
      child.stdin?.end(input);
    });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new ShoalError(`--network bridged needs ${command} on the host (Debian: apt-get install ${command === 'nft' ? 'nftables' : 'iproute2'})`);
    throw new ShoalError(`${command} ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim().split('\n')[0]}`);
  }
}

const NFT_TABLE = `
add table ip shoal
delete table ip shoal
table ip shoal {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr ${SUBNET_PREFIX}.0/${PREFIX_LENGTH} ip daddr != ${SUBNET_PREFIX}.0/${PREFIX_LENGTH} masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "${BRIDGE}" accept
    oifname "${BRIDGE}" ct state established,related accept
    oifname "${BRIDGE}" drop
  }
}
`;

/** The shared part: bridge, gateway address, forwarding, NAT. Idempotent. */
export async function ensureBridge(): Promise<void> {
  if (!fs.existsSync(`/sys/class/net/${BRIDGE}`)) {
    await run('ip', ['link', 'add', BRIDGE, 'type', 'bridge']).catch((err: Error) => {
      // Another VM start made it first.
      if (!fs.existsSync(`/sys/class/net/${BRIDGE}`)) throw err;
    });
  }
  const addresses = await run('ip', ['-o', '-4', 'addr', 'show', 'dev', BRIDGE]);
  if (!addresses.includes(` ${GATEWAY}/`)) {
    await run('ip', ['addr', 'add', `${GATEWAY}/${PREFIX_LENGTH}`, 'dev', BRIDGE]).catch((err: Error) => {
      if (!/File exists/.test(err.message)) throw err;
    });
  }
  await run('ip', ['link', 'set', BRIDGE, 'up']);
  await removeOrphanTaps();
  fs.writeFileSync('/proc/sys/net/ipv4/ip_forward', '1\n');
  await run('nft', ['-f', '-'], NFT_TABLE);
}

/** Puts a VM's TAP (made by its VMM, or by createTap) on the bridge, isolated from the other VMs' ports. */
export async function attachTap(tap: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(`/sys/class/net/${tap}`)) {
    if (Date.now() > deadline) throw new ShoalError(`the VMM did not create its network device ${tap}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await run('ip', ['link', 'set', tap, 'master', BRIDGE, 'up']);
  await run('ip', ['link', 'set', tap, 'type', 'bridge_slave', 'isolated', 'on']);
}

/**
 * Creates a persistent TAP for a VMM that opens an existing one (Firecracker), owned by the
 * user the VMM runs as (the jail's uid when jailed) so it can attach without privileges. Unlike
 * a TAP QEMU makes, it outlives a killed VMM: releaseVmResources removes it.
 */
export async function createTap(tap: string, owner?: { uid: number; gid: number }): Promise<void> {
  if (fs.existsSync(`/sys/class/net/${tap}`)) await run('ip', ['link', 'del', tap]);
  const user = owner ? ['user', String(owner.uid), 'group', String(owner.gid)] : [];
  await run('ip', ['tuntap', 'add', 'dev', tap, 'mode', 'tap', ...user]);
}

/** Removes a VM's TAP if it is still there (its VMM normally takes it along). */
export async function removeTap(tap: string): Promise<void> {
  if (fs.existsSync(`/sys/class/net/${tap}`)) await run('ip', ['link', 'del', tap]).catch(() => undefined);
}

/**
 * Where address claims live: host-wide (every state directory shares the one bridge), on a
 * tmpfs, since the TAPs they stand for do not survive a reboot either.
 */
export const CLAIMS_DIR = process.env.SHOAL_NET_CLAIMS_DIR ?? '/run/shoal/bridged-addresses';

interface Claim {
  id: string;
  /** The supervisor holding the address: the claim is stale once it is gone. */
  pid: number;
  startTime?: string;
}

function readClaim(file: string): Claim | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as Claim;
  } catch {
    return undefined;
  }
}

/** Claims a free address of the subnet for the VM `id`, held by the supervisor process `pid`. */
export function claimAddress(id: string, pid: number = process.pid, dir: string = CLAIMS_DIR): string {
  ensurePrivateDir(dir);
  const claim: Claim = { id, pid };
  const startTime = processStartTime(pid);
  if (startTime !== undefined) claim.startTime = startTime;
  const text = JSON.stringify(claim);
  for (let host = 2; host < 255; host++) {
    const address = `${SUBNET_PREFIX}.${host}`;
    const file = path.join(dir, address);
    // Two rounds: the second after a stale claim was moved aside.
    for (let round = 0; round < 2; round++) {
      if (createWhole(file, text)) return address;
      const holder = readClaim(file);
      if (holder?.id === id) return address;
      if (!holder || isAlive(holder.pid, holder.startTime)) break; // taken (or just vanished: next address)
      // A stale claim: move it aside (rename is atomic, so of two takers only one gets this file),
      // check that it is still the stale one, then compete for the create like everyone else.
      const aside = `${file}.reap-${id}`;
      try {
        fs.renameSync(file, aside);
      } catch {
        continue;
      }
      const moved = readClaim(aside);
      if (moved && moved.id !== holder.id) {
        // A live claim slipped in between: put it back, it is not ours to take.
        try {
          fs.linkSync(aside, file);
        } catch {
          // yet another claim took its place; that one stands
        }
        fs.rmSync(aside, { force: true });
        break;
      }
      fs.rmSync(aside, { force: true });
    }
  }
  throw new ShoalError(`no free address left in ${SUBNET_PREFIX}.0/${PREFIX_LENGTH} for --network bridged`);
}

/**
 * Removes TAPs a killed supervisor left behind: a Firecracker VM's TAP is persistent (QEMU's go
 * with QEMU), so after `kill -9` of its supervisor it stays until `rm -f`. A shoal TAP whose VM
 * holds no live address claim belongs to nobody. A starting VM claims its address before it
 * makes its TAP, so its TAP is never taken for an orphan.
 */
export async function removeOrphanTaps(dir: string = CLAIMS_DIR, devices: string[] = fs.readdirSync('/sys/class/net')): Promise<string[]> {
  const owners = new Set<string>();
  for (const entry of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    const claim = readClaim(path.join(dir, entry));
    if (claim && isAlive(claim.pid, claim.startTime)) owners.add(tapName(claim.id));
  }
  const removed: string[] = [];
  for (const device of devices) {
    // Only shoal's names, and only TAPs (tun devices have tun_flags).
    if (!device.startsWith('shoal-') || owners.has(device) || !fs.existsSync(`/sys/class/net/${device}/tun_flags`)) continue;
    await removeTap(device);
    removed.push(device);
  }
  return removed;
}

export function releaseAddress(id: string, address: string | undefined, dir: string = CLAIMS_DIR): void {
  if (!address) return;
  const file = path.join(dir, address);
  if (readClaim(file)?.id === id) fs.rmSync(file, { force: true });
}

/** A resolver the guest can reach: the host's first non-loopback nameserver, else a public one. */
export function hostNameserver(): string {
  for (const file of ['/etc/resolv.conf', '/run/systemd/resolve/resolv.conf']) {
    try {
      for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
        const match = /^\s*nameserver\s+(\d+\.\d+\.\d+\.\d+)\s*$/.exec(line);
        if (match && !match[1]!.startsWith('127.')) return match[1]!;
      }
    } catch {
      // no such file
    }
  }
  return '1.1.1.1';
}
