/**
 * Published ports of a bridged VM: a proxy in the supervisor that listens on the host port and
 * connects to the guest's address (podman's rootlessport does the same). A proxy rather than
 * DNAT rules because it works for connections from the host's own loopback too, and because the
 * kernel closes its sockets when the supervisor dies: no rule can outlive the VM.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { ShoalError } from '../util/errors';
import type { PortForward } from '../vmm/backend';

/** A UDP "connection" ends after this much silence, as conntrack's UDP timeout does. */
const UDP_IDLE_MS = 60_000;

export interface PortProxy {
  close(): void;
}

export async function startPortProxies(forwards: PortForward[], guestAddress: string): Promise<PortProxy> {
  const closers: (() => void)[] = [];
  const close = (): void => { for (const c of closers.splice(0)) c(); };
  try {
    for (const f of forwards) closers.push(await (f.proto === 'tcp' ? tcpProxy(f, guestAddress) : udpProxy(f, guestAddress)));
  } catch (err) {
    close();
    throw err;
  }
  return { close };
}

function tcpProxy(f: PortForward, guestAddress: string): Promise<() => void> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: guestAddress, port: f.guestPort });
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => { client.destroy(); upstream.destroy(); });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return listen(f, (resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: f.hostAddress, port: f.hostPort }, () => resolve(() => {
      server.close();
      for (const s of sockets) s.destroy();
    }));
  });
}

function udpProxy(f: PortForward, guestAddress: string): Promise<() => void> {
  const socket = dgram.createSocket(f.hostAddress.includes(':') ? 'udp6' : 'udp4');
  // One upstream socket per client, so the guest's replies find their way back.
  const flows = new Map<string, { upstream: dgram.Socket; timer: NodeJS.Timeout }>();
  socket.on('message', (data, client) => {
    const key = `${client.address}:${client.port}`;
    let flow = flows.get(key);
    if (!flow) {
      const upstream = dgram.createSocket('udp4');
      upstream.on('message', (reply) => socket.send(reply, client.port, client.address));
      upstream.on('error', () => undefined);
      flow = { upstream, timer: setTimeout(() => undefined, 0) };
      flows.set(key, flow);
    }
    const current = flow;
    clearTimeout(current.timer);
    current.timer = setTimeout(() => {
      current.upstream.close();
      flows.delete(key);
    }, UDP_IDLE_MS);
    current.upstream.send(data, f.guestPort, guestAddress);
  });
  return listen(f, (resolve, reject) => {
    socket.once('error', reject);
    socket.bind({ address: f.hostAddress, port: f.hostPort }, () => resolve(() => {
      socket.close();
      for (const flow of flows.values()) {
        clearTimeout(flow.timer);
        flow.upstream.close();
      }
    }));
  });
}

function listen(f: PortForward, start: (resolve: (close: () => void) => void, reject: (err: Error) => void) => void): Promise<() => void> {
  return new Promise((resolve, reject) => {
    start(resolve, (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'the port is already in use' : err.message;
      reject(new ShoalError(`cannot publish ${f.hostAddress}:${f.hostPort}/${f.proto}: ${why}`));
    });
  });
}
