/**
 * fetch over a Unix socket (node:http's socketPath), answering with a standard Response so the
 * rest of the client does not care how it reached the server. `shoal serve`'s local default is
 * a Unix socket in a root-owned directory: unlike a loopback TCP port, no other local user can
 * take its place while the server is down and collect the token from clients.
 */
import http from 'node:http';
import { once } from 'node:events';
import { Readable } from 'node:stream';

export function unixFetch(socketPath: string, url: string, init: RequestInit): Promise<Response> {
  return new Promise<Response>((resolve, reject) => {
    const target = new URL(url);
    const request = http.request({
      socketPath,
      path: `${target.pathname}${target.search}`,
      method: init.method ?? 'GET',
      headers: { host: 'localhost', ...(init.headers as Record<string, string> | undefined) },
      ...(init.signal ? { signal: init.signal } : {}),
    }, (res) => {
      const headers = new Headers();
      for (const [key, value] of Object.entries(res.headers)) {
        if (Array.isArray(value)) for (const v of value) headers.append(key, v);
        else if (value !== undefined) headers.set(key, value);
      }
      const status = res.statusCode ?? 502;
      const body = status === 204 || status === 304 ? null : (Readable.toWeb(res) as unknown as ReadableStream<Uint8Array>);
      if (body === null) res.resume();
      resolve(new Response(body, { status, headers }));
    });
    request.on('error', reject);
    const body = init.body as unknown;
    if (body === undefined || body === null) {
      request.end();
    } else if (typeof body === 'string' || body instanceof Uint8Array) {
      request.end(body);
    } else if (typeof body === 'object' && Symbol.asyncIterator in body) {
      // A streamed body (an upload): written at the socket's pace.
      void (async () => {
        for await (const chunk of body as AsyncIterable<Uint8Array | string>) {
          if (!request.write(chunk)) await once(request, 'drain');
        }
        request.end();
      })().catch((err: unknown) => request.destroy(err as Error));
    } else {
      request.destroy();
      reject(new TypeError('unsupported request body for a Unix socket'));
    }
  });
}
