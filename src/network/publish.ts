/**
 * `--publish [ADDR:]HOST:GUEST[/tcp|/udp][,...]`, as podman spells it, and the check that every
 * host port is free before a VM starts (a taken port is a clear error, not a VMM failure later).
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { ShoalError } from '../util/errors';
import type { PortForward } from '../vmm/backend';

const DEFAULT_ADDRESS = '0.0.0.0';

function port(value: string, spec: string): number {
  if (!/^\d+$/.test(value)) throw new ShoalError(`invalid --publish "${spec}": "${value}" is not a port number`);
  const n = Number(value);
  if (n < 1 || n > 65535) throw new ShoalError(`invalid --publish "${spec}": port ${n} is out of range (1 to 65535)`);
  return n;
}

export function parsePublish(values: string[]): PortForward[] {
  const forwards: PortForward[] = [];
  for (const value of values.flatMap((v) => v.split(','))) {
    const spec = value.trim();
    if (!spec) continue;
    const [mapping, proto = 'tcp', extra] = spec.split('/');
    if (extra !== undefined || (proto !== 'tcp' && proto !== 'udp')) throw new ShoalError(`invalid --publish "${spec}": protocol must be tcp or udp`);
    // An IPv6 address is written in brackets: [::1]:8080:80.
    const match = /^(?:(\[[0-9a-fA-F:]+\]|[^:]+):)?([^:]+):([^:]+)$/.exec(mapping ?? '');
    if (!match) throw new ShoalError(`invalid --publish "${spec}": expected [ADDR:]HOST:GUEST[/tcp|/udp]`);
    const address = (match[1] ?? DEFAULT_ADDRESS).replace(/^\[|\]$/g, '');
    if (net.isIP(address) === 0) throw new ShoalError(`invalid --publish "${spec}": "${address}" is not an IP address`);
    forwards.push({ proto, hostAddress: address, hostPort: port(match[2]!, spec), guestPort: port(match[3]!, spec) });
  }
  const seen = new Set<string>();
  for (const f of forwards) {
    const key = `${f.proto}/${f.hostPort}`;
    if (seen.has(key)) throw new ShoalError(`--publish names host port ${f.hostPort}/${f.proto} twice`);
    seen.add(key);
  }
  return forwards;
}

/** A forward as `ls --json` and `fork --json` show it: `ADDR:HOST->GUEST/PROTO`. */
export function formatForward(f: PortForward): string {
  return `${f.hostAddress}:${f.hostPort}->${f.guestPort}/${f.proto}`;
}

/** Binds each host port for a moment; throws a one-line error naming the first one in use. */
export async function assertPortsFree(forwards: PortForward[]): Promise<void> {
  for (const f of forwards) {
    const problem = await (f.proto === 'tcp' ? tryTcp(f) : tryUdp(f));
    if (problem) throw new ShoalError(`cannot publish ${f.hostAddress}:${f.hostPort}/${f.proto}: ${problem}`);
  }
}

function describe(err: NodeJS.ErrnoException): string {
  if (err.code === 'EADDRINUSE') return 'the port is already in use';
  if (err.code === 'EACCES') return 'permission denied';
  if (err.code === 'EADDRNOTAVAIL') return 'no such address on this host';
  return err.message;
}

function tryTcp(f: PortForward): Promise<string | undefined> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', (err: NodeJS.ErrnoException) => resolve(describe(err)));
    server.listen({ host: f.hostAddress, port: f.hostPort, exclusive: true }, () => server.close(() => resolve(undefined)));
  });
}

function tryUdp(f: PortForward): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket(net.isIPv6(f.hostAddress) ? 'udp6' : 'udp4');
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(describe(err)));
    socket.bind({ address: f.hostAddress, port: f.hostPort, exclusive: true }, () => socket.close(() => resolve(undefined)));
  });
}

/**
 * The forwards of the i-th (1-based) of `count` fork children: each host port shifted by i-1, so
 * `fork -n 3 -p 8080:80` publishes the children's port 80 on 8080, 8081 and 8082.
 */
export function forwardsForChild(forwards: PortForward[], index: number, count: number): PortForward[] {
  for (const f of forwards) {
    if (f.hostPort + count - 1 > 65535) throw new ShoalError(`cannot publish ${f.hostPort}/${f.proto} for ${count} clones: port ${f.hostPort + count - 1} is out of range`);
  }
  return forwards.map((f) => ({ ...f, hostPort: f.hostPort + index - 1 }));
}
