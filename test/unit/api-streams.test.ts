/**
 * The native API's document and streams against a fake core: every registered route (the PTY
 * WebSocket too) is in the OpenAPI document, with its request body; create streams its
 * progress as SSE on request; every SSE stream carries heartbeats; the `metadata=` filter.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer, registeredRoutes } from '../../src/api/server';
import { FakeCore } from '../helpers/fake-core';

const TOKEN = 'unit-test-token-0123456789abcdef';
let app: FastifyInstance;
let base = '';

before(async () => {
  app = await buildServer(new FakeCore(), { token: TOKEN, sweepMs: 0, sseHeartbeatMs: 40 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});

after(() => app.close());

/** One request; the body read whole, or until `until` matches it (then the request is dropped). */
function request(method: string, url: string, options: { body?: unknown; accept?: string; until?: RegExp; timeoutMs?: number } = {}): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const payload = options.body === undefined ? undefined : JSON.stringify(options.body);
    const req = http.request(`${base}${url}`, {
      method,
      headers: { authorization: `bEaReR ${TOKEN}`, ...(payload ? { 'content-type': 'application/json' } : {}), ...(options.accept ? { accept: options.accept } : {}) },
    }, (res) => {
      let body = '';
      const timer = setTimeout(() => {
        req.destroy();
        reject(new Error(`timed out; so far: ${body}`));
      }, options.timeoutMs ?? 5000);
      const done = (): void => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type'] ?? ''), body });
      };
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
        if (options.until?.test(body)) {
          req.destroy();
          done();
        }
      });
      res.on('end', done);
    });
    req.on('error', (err) => { if (!options.until) reject(err); });
    req.end(payload);
  });
}

/** The events of an SSE body: [event, data] pairs (comments left out). */
function events(body: string): Array<[string, unknown]> {
  return body.split('\n\n').filter((b) => b.includes('event: ')).map((block) => {
    const event = /^event: (.*)$/m.exec(block)![1]!;
    const data = /^data: (.*)$/m.exec(block)?.[1];
    return [event, data === undefined ? undefined : JSON.parse(data)];
  });
}

it('every registered route is in the OpenAPI document, with its request body', async () => {
  const doc = (await app.inject({ method: 'GET', url: '/v1/openapi.json', headers: { authorization: `Bearer ${TOKEN}` } })).json() as { paths: Record<string, Record<string, { requestBody?: { content: Record<string, unknown> } }>> };
  const swagger = app.swagger() as unknown as typeof doc;
  assert.deepEqual(Object.keys(swagger.paths).sort(), Object.keys(doc.paths).sort(), 'the served document is app.swagger()');
  // E2B's sandbox API (/e2b), envd (/e2b/envd) and envd's signed-URL /files are E2B's protocols,
  // documented by E2B's own specs (docs/envd.md), not this API's document.
  const e2bSurface = (url: string): boolean => url === '/e2b' || url.startsWith('/e2b/') || url === '/files';
  const routes = registeredRoutes(app).filter((r) => r.method !== 'HEAD' && !r.hidden && !e2bSurface(r.url));
  assert.ok(routes.length >= 20, `routes: ${routes.length}`);
  assert.ok(routes.some((r) => r.websocket && r.url === '/v1/sandboxes/:id/pty'), 'the PTY route is registered as a WebSocket route');
  const missing: string[] = [];
  for (const route of routes) {
    const path = route.url.replace(/:([A-Za-z_]+)/g, '{$1}');
    const operation = swagger.paths[path]?.[route.method.toLowerCase()];
    if (!operation) {
      missing.push(`${route.method} ${route.url}: not in the document`);
      continue;
    }
    if (['POST', 'PUT', 'PATCH'].includes(route.method) && Object.keys(operation.requestBody?.content ?? {}).length === 0) {
      missing.push(`${route.method} ${route.url}: no request body in the document`);
    }
  }
  assert.deepEqual(missing, []);
  assert.ok(swagger.paths['/v1/sandboxes/{id}/files']!.put!.requestBody!.content['application/octet-stream'], 'a raw body is documented as octet-stream');
  assert.ok(JSON.stringify(swagger.paths['/v1/sandboxes']!.post).includes('text/event-stream'), 'create documents its event stream');
  assert.ok(JSON.stringify(swagger.paths['/v1/sandboxes']!.get).includes('metadata'), 'the list documents its metadata filter');
});

it('create with Accept: text/event-stream streams progress, then the sandbox', async () => {
  const r = await request('POST', '/v1/sandboxes', { body: { image: 'busybox', name: 'streamed', metadata: { team: 'a' } }, accept: 'text/event-stream' });
  assert.equal(r.status, 200);
  assert.match(r.type, /^text\/event-stream/);
  const got = events(r.body);
  assert.deepEqual(got.slice(0, 2), [['progress', { stage: 'create', message: 'using a fake VMM' }], ['progress', { stage: 'create', message: 'starting the container' }]]);
  assert.equal(got.length, 3);
  assert.equal(got[2]![0], 'sandbox');
  assert.equal((got[2]![1] as { name: string }).name, 'streamed');
  // A refusal before the create is still a plain JSON error, with its status.
  const bad = await request('POST', '/v1/sandboxes', { body: { image: 'busybox', snapshot: 'x' }, accept: 'text/event-stream' });
  assert.equal(bad.status, 400);
  // And without the header, the plain answer.
  const plain = await request('POST', '/v1/sandboxes', { body: { image: 'busybox', name: 'plain', metadata: { team: 'b' } } });
  assert.equal(plain.status, 201);
});

it('GET /v1/sandboxes filters by metadata=K=V&... (URL-encoded) and metadata.K=V', async () => {
  const names = async (query: string): Promise<string[]> => (JSON.parse((await request('GET', `/v1/sandboxes${query}`)).body) as Array<{ name: string }>).map((s) => s.name).sort();
  assert.deepEqual(await names(`?metadata=${encodeURIComponent('team=a')}`), ['streamed']);
  assert.deepEqual(await names('?metadata.team=b'), ['plain']);
  assert.deepEqual(await names(`?metadata=${encodeURIComponent('team=a&other=x')}`), []);
  assert.deepEqual(await names(''), ['plain', 'streamed']);
});

it('SSE streams carry a heartbeat comment while quiet (process events and logs)', async () => {
  const id = (JSON.parse((await request('GET', '/v1/sandboxes')).body) as Array<{ sandboxId: string; name: string }>).find((s) => s.name === 'plain')!.sandboxId;
  const exec = await request('POST', `/v1/sandboxes/${id}/exec`, { body: { cmd: 'sleep 0.5; echo done' }, accept: 'text/event-stream' });
  assert.match(exec.body, /^: keep-alive$/m);
  assert.deepEqual(events(exec.body).map(([e]) => e).filter((e) => e !== 'start'), ['stdout', 'exit']);
  const logs = await request('GET', `/v1/sandboxes/${id}/logs?follow=true`, { until: /: keep-alive\n\n/ });
  assert.match(logs.type, /^text\/event-stream/);
  assert.match(logs.body, /^: keep-alive$/m);
});
