/**
 * E2B's getHost: with `shoal serve --domain D`, a request whose Host is PORT-SANDBOXID.D goes to
 * that port in that sandbox, HTTP and WebSocket (any Upgrade) alike, through a guest tunnel
 * (guest-tunnel.ts): clones and forks need no host port. Like E2B's, these URLs carry no API
 * key; a sandbox created with `secure: true` wants its traffic token in
 * `e2b-traffic-access-token`. Upstream, each request has its own connection (Connection:
 * close); the client's connection to shoal stays keep-alive.
 */
import http from 'node:http';
import { Duplex, PassThrough } from 'node:stream';
import type { Core } from '../core';
import { openGuestTunnel } from './guest-tunnel';
import type { E2bSandboxes } from './sandboxes';
import { tokenMatches } from './sandbox-facts';

export const TRAFFIC_TOKEN_HEADER = 'e2b-traffic-access-token';

interface Target {
  port: number;
  sandboxId: string;
}

type Resolved = { vmId: string; port: number } | { status: number; message: string };

export class HostProxy {
  private readonly pattern: RegExp;

  constructor(private readonly core: Core, private readonly sandboxes: E2bSandboxes, domain: string) {
    const escaped = domain.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    this.pattern = new RegExp(`^([0-9]{1,5})-([a-z0-9][a-z0-9_-]{0,62})\\.${escaped}\\.?(?::[0-9]{1,5})?$`);
  }

  /** The sandbox port a request is for, or undefined (then it is an API request). */
  target(request: http.IncomingMessage): Target | undefined {
    const host = request.headers.host?.toLowerCase();
    const m = host === undefined ? null : this.pattern.exec(host);
    if (!m) return undefined;
    const port = Number(m[1]);
    return port >= 1 && port <= 65535 ? { port, sandboxId: m[2]! } : undefined;
  }

  private resolve(request: http.IncomingMessage, target: Target): Resolved {
    const found = this.sandboxes.find(target.sandboxId);
    // E2B's proxy answers 502 for a sandbox it cannot reach (the SDK reads it as "not running").
    if (!found) return { status: 502, message: `sandbox ${target.sandboxId} not found` };
    if (found.state !== 'running') return { status: 502, message: `sandbox ${target.sandboxId} is paused: connect to it first` };
    if (found.facts.secure && found.facts.trafficAccessToken !== null) {
      const given = request.headers[TRAFFIC_TOKEN_HEADER];
      if (!tokenMatches(typeof given === 'string' ? given : undefined, found.facts.trafficAccessToken)) return { status: 401, message: `missing or wrong ${TRAFFIC_TOKEN_HEADER}` };
    }
    return { vmId: found.vm.id, port: target.port };
  }

  /** A plain HTTP request: relayed, the response streamed back (with the client's own flow control). */
  http(request: http.IncomingMessage, response: http.ServerResponse, target: Target): void {
    const resolved = this.resolve(request, target);
    if ('status' in resolved) {
      fail(response, resolved.status, resolved.message);
      return;
    }
    const upstream = http.request({
      method: request.method,
      path: request.url,
      headers: forwardHeaders(request, 'close'),
      createConnection: lazyTunnel(this.core, resolved.vmId, resolved.port) as never,
    });
    upstream.on('response', (reply) => {
      response.writeHead(reply.statusCode ?? 502, reply.rawHeaders);
      reply.pipe(response);
    });
    upstream.on('error', (err) => {
      if (!response.headersSent) fail(response, 502, `port ${resolved.port} in sandbox ${target.sandboxId}: ${err.message}`);
      else response.destroy();
    });
    response.on('close', () => upstream.destroy());
    request.pipe(upstream);
  }

  /** An Upgrade request (WebSocket): the guest's 101 goes back, then bytes both ways. */
  upgrade(request: http.IncomingMessage, socket: Duplex, head: Buffer, target: Target): void {
    const resolved = this.resolve(request, target);
    if ('status' in resolved) {
      socket.end(`HTTP/1.1 ${resolved.status} ${http.STATUS_CODES[resolved.status]}\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n${JSON.stringify({ code: resolved.status, message: resolved.message })}`);
      return;
    }
    const upstream = http.request({
      method: request.method,
      path: request.url,
      headers: forwardHeaders(request, undefined),
      createConnection: lazyTunnel(this.core, resolved.vmId, resolved.port) as never,
    });
    socket.on('error', () => upstream.destroy());
    upstream.on('upgrade', (reply, tunnel, upstreamHead) => {
      const lines = [`HTTP/1.1 ${reply.statusCode} ${reply.statusMessage}`];
      for (let i = 0; i < reply.rawHeaders.length; i += 2) lines.push(`${reply.rawHeaders[i]}: ${reply.rawHeaders[i + 1]}`);
      socket.write(`${lines.join('\r\n')}\r\n\r\n`);
      if (upstreamHead.length > 0) socket.write(upstreamHead);
      if (head.length > 0) tunnel.write(head);
      tunnel.on('error', () => socket.destroy());
      socket.on('close', () => tunnel.destroy());
      tunnel.pipe(socket);
      socket.pipe(tunnel);
    });
    upstream.on('response', (reply) => {
      // The guest refused the upgrade: its answer, then the end.
      const lines = [`HTTP/1.1 ${reply.statusCode} ${reply.statusMessage}`];
      for (let i = 0; i < reply.rawHeaders.length; i += 2) lines.push(`${reply.rawHeaders[i]}: ${reply.rawHeaders[i + 1]}`);
      socket.write(`${lines.join('\r\n')}\r\nconnection: close\r\n\r\n`);
      reply.pipe(socket);
    });
    upstream.on('error', (err) => socket.end(`HTTP/1.1 502 Bad Gateway\r\nconnection: close\r\n\r\n${JSON.stringify({ code: 502, message: err.message })}`));
    upstream.end();
  }
}

/** The client's headers for the guest, minus the traffic token (the guest has no business with it). */
function forwardHeaders(request: http.IncomingMessage, connection: string | undefined): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(request.headers)) {
    if (v === undefined || k === TRAFFIC_TOKEN_HEADER) continue;
    if (connection !== undefined && (k === 'connection' || k === 'keep-alive')) continue;
    out[k] = v;
  }
  if (connection !== undefined) out.connection = connection;
  return out;
}

/**
 * http.request's createConnection wants a socket at once; the tunnel takes an exec to open. A
 * pass-through stands in and is joined to the tunnel when it is up (writes wait in between).
 */
function lazyTunnel(core: Core, vmId: string, port: number): () => Duplex {
  return () => {
    const toGuest = new PassThrough();
    const fromGuest = new PassThrough();
    const front = Duplex.from({ writable: toGuest, readable: fromGuest });
    openGuestTunnel(core, vmId, port).then((tunnel) => {
      toGuest.pipe(tunnel);
      tunnel.pipe(fromGuest);
      tunnel.on('error', (err) => front.destroy(err));
      front.on('close', () => tunnel.destroy());
    }, (err: Error) => front.destroy(err));
    return front;
  };
}

function fail(response: http.ServerResponse, status: number, message: string): void {
  response.writeHead(status, { 'content-type': 'application/json', connection: 'close' });
  response.end(JSON.stringify({ code: status, message }));
}

/**
 * Fastify's serverFactory: requests (and upgrades) for sandbox hosts go to the proxy before
 * fastify sees them, everything else to fastify (whose own upgrade listener, the WebSocket
 * plugin's, then never sees a sandbox's WebSocket).
 */
export function serverWithHostProxy(proxy: HostProxy): (handler: http.RequestListener) => http.Server {
  return (handler) => {
    const server = http.createServer((request, response) => {
      const target = proxy.target(request);
      if (target) proxy.http(request, response, target);
      else handler(request, response);
    });
    const emit = server.emit.bind(server) as (event: string, ...args: unknown[]) => boolean;
    server.emit = ((event: string, ...args: unknown[]): boolean => {
      if (event === 'upgrade') {
        const [request, socket, head] = args as [http.IncomingMessage, Duplex, Buffer];
        const target = proxy.target(request);
        if (target) {
          proxy.upgrade(request, socket, head, target);
          return true;
        }
      }
      return emit(event, ...args);
    }) as typeof server.emit;
    return server;
  };
}
