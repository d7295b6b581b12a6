/**
 * The API server against a fake core (no VM): auth, every kind of bad input of issue 16 (right
 * status, one clear message, nothing changed), limits, and the OpenAPI document checked against
 * the requests this file sends (valid ones pass it, schema-refused ones fail it).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import Ajv from 'ajv';
import type { FastifyInstance } from 'fastify';
import fs from 'node:fs';
import path from 'node:path';
import { buildServer } from '../../src/api/server';
import { tempDir } from '../helpers/temp-dir';
import { FakeCore } from '../helpers/fake-core';

const TOKEN = 'unit-test-token-0123456789abcdef';
const auth = { authorization: `Bearer ${TOKEN}` };

interface OpenApi {
  paths: Record<string, Record<string, { requestBody?: { content: Record<string, { schema: unknown }> } }>>;
  components: { schemas: Record<string, unknown> };
}

let app: FastifyInstance;
let core: FakeCore;
let doc: OpenApi;
let sandboxId: string;
const ajv = new Ajv({ strict: false, allErrors: false });

/** Validates a JSON body against the document's schema for METHOD PATH; returns whether it passes. */
function documentAccepts(method: string, url: string, body: unknown): boolean {
  const route = url.split('?')[0]!;
  const template = Object.keys(doc.paths).find((p) => new RegExp(`^${p.replace(/\{[^}]+\}/g, '[^/]+')}$`).test(route));
  assert.ok(template, `the document has no path for ${route}`);
  const operation = doc.paths[template]![method.toLowerCase()];
  assert.ok(operation, `the document has no ${method} ${template}`);
  const schema = operation.requestBody?.content['application/json']?.schema;
  assert.ok(schema, `the document has no JSON body for ${method} ${template}`);
  const validate = ajv.compile({ ...(schema as object), components: doc.components });
  return validate(body) as boolean;
}

async function send(method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body?: unknown, headers: Record<string, string> = auth) {
  const response = await app.inject({ method, url, headers, ...(body !== undefined ? { payload: body as object } : {}) });
  return { status: response.statusCode, json: response.body ? (JSON.parse(response.body) as Record<string, unknown>) : undefined, body: response.body };
}

/** A refused request: the status, a one-line message, and no call reached the core. */
async function refused(status: number, method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body?: unknown, headers: Record<string, string> = auth): Promise<string> {
  const calls = core.calls.length;
  const vms = JSON.stringify(core.list());
  const r = await send(method, url, body, headers);
  assert.equal(r.status, status, `${method} ${url}: ${r.body}`);
  const error = (r.json as { error: { code: string; message: string } }).error;
  assert.equal(typeof error.code, 'string');
  assert.ok(error.message.length > 0 && !error.message.includes('\n'), `one line: ${error.message}`);
  assert.equal(core.calls.length, calls, `nothing reached the core: ${core.calls.slice(calls).join(', ')}`);
  assert.equal(JSON.stringify(core.list()), vms, 'no sandbox changed');
  return error.message;
}

before(async () => {
  core = new FakeCore();
  app = await buildServer(core, { token: TOKEN, bodyLimit: 64 * 1024, stdinLimit: 1024, maxFileBytes: 4096, sweepMs: 0, processLimits: { maxRunning: 2, keepFinished: 4, ring: { maxEvents: 100, maxBytes: 10_000 } } });
  doc = (await send('GET', '/v1/openapi.json')).json as unknown as OpenApi;
  const body = { image: 'docker.io/library/busybox', metadata: { team: 'a' } };
  assert.ok(documentAccepts('POST', '/v1/sandboxes', body));
  const created = await send('POST', '/v1/sandboxes', body);
  assert.equal(created.status, 201);
  sandboxId = (created.json as { sandboxId: string }).sandboxId;
});

after(async () => {
  await app.close();
});

describe('auth', () => {
  it('refuses a missing or wrong token with 401', async () => {
    assert.match(await refused(401, 'GET', '/v1/sandboxes', undefined, {}), /missing token/);
    assert.match(await refused(401, 'GET', '/v1/sandboxes', undefined, { authorization: 'Bearer nope' }), /wrong token/);
    assert.match(await refused(401, 'GET', '/v1/sandboxes', undefined, { authorization: `Basic ${TOKEN}` }), /missing token/);
    await refused(401, 'POST', '/v1/sandboxes', { image: 'x' }, {});
    await refused(401, 'DELETE', `/v1/sandboxes/${sandboxId}`, undefined, {});
  });

  it('takes the Bearer scheme in any case (RFC 7235)', async () => {
    for (const scheme of ['bearer', 'BEARER', 'BeArEr']) {
      assert.equal((await send('GET', '/v1/sandboxes', undefined, { authorization: `${scheme} ${TOKEN}` })).status, 200, scheme);
    }
    assert.match(await refused(401, 'GET', '/v1/sandboxes', undefined, { authorization: `bearer ${TOKEN}x` }), /wrong token/);
  });

  it('takes ?access_token= on GET (SSE, WebSocket) but not on other methods', async () => {
    assert.equal((await send('GET', `/v1/sandboxes?access_token=${TOKEN}`, undefined, {})).status, 200);
    await refused(401, 'POST', `/v1/sandboxes/${sandboxId}/timeout?access_token=${TOKEN}`, { timeoutSec: 5 }, {});
  });
});

describe('host archives as images', () => {
  it('are taken only from the --image-dir directories, without following links out, with one answer for missing and not allowed', async () => {
    const root = tempDir('shoal-image-dirs-');
    const images = path.join(root, 'images');
    fs.mkdirSync(path.join(images, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(images, 'busybox.tar'), 'archive');
    fs.writeFileSync(path.join(root, 'outside.tar'), 'secret');
    fs.symlinkSync('/etc/passwd', path.join(images, 'passwd.tar'));
    fs.symlinkSync(path.join(root, 'outside.tar'), path.join(images, 'out.tar'));
    fs.symlinkSync(root, path.join(images, 'up'));
    const withDirs = await buildServer(core, { token: TOKEN, sweepMs: 0, imageDirs: [images] });
    const main = app;
    try {
      app = withDirs;
      const messages = new Set<string>();
      for (const image of [
        'docker-archive:/etc/passwd', // exists, not allowed
        'docker-archive:/nonexistent/x.tar', // missing
        `docker-archive:${path.join(images, 'missing.tar')}`, // missing, inside
        `docker-archive:${path.join(images, 'passwd.tar')}`, // a link out of the directory
        'oci-archive:out.tar', // relative, a link out
        'docker-archive:../outside.tar', // relative, climbing out
        'docker-archive:up/outside.tar', // through a linked directory
        'docker-archive:sub', // not a regular file
        `docker-archive:${images}`,
      ]) messages.add(await refused(404, 'POST', '/v1/sandboxes', { image }));
      assert.equal(messages.size, 1, `one answer for every refusal: ${[...messages].join(' | ')}`);
      for (const image of [`docker-archive:${path.join(images, 'busybox.tar')}`, 'docker-archive:busybox.tar', `oci-archive:${images}/sub/../busybox.tar`]) {
        const created = await send('POST', '/v1/sandboxes', { image });
        assert.equal(created.status, 201, created.body);
        const format = image.split(':')[0];
        assert.equal((created.json as { image: string }).image, `${format}:${fs.realpathSync(path.join(images, 'busybox.tar'))}`, 'the CLI gets the real path');
        await send('DELETE', `/v1/sandboxes/${(created.json as { sandboxId: string }).sandboxId}`);
      }
      // A server without image directories takes no host archive at all.
      app = main;
      assert.ok(messages.has(await refused(404, 'POST', '/v1/sandboxes', { image: `docker-archive:${path.join(images, 'busybox.tar')}` })));
    } finally {
      app = main;
      await withDirs.close();
    }
  });
});

describe('bad input', () => {
  it('malformed JSON is a 400', async () => {
    const calls = core.calls.length;
    const r = await app.inject({ method: 'POST', url: '/v1/sandboxes', headers: { ...auth, 'content-type': 'application/json' }, payload: '{"image": ' });
    assert.equal(r.statusCode, 400);
    assert.match(JSON.parse(r.body).error.message, /malformed JSON/);
    assert.equal(core.calls.length, calls);
  });

  it('unknown fields are refused by name, and the document refuses them too', async () => {
    const cases: Array<[string, Record<string, unknown>, string]> = [
      ['/v1/sandboxes', { image: 'busybox', cpu: 2 }, 'cpu'],
      [`/v1/sandboxes/${sandboxId}/exec`, { cmd: 'true', timeout: 3 }, 'timeout'],
      [`/v1/sandboxes/${sandboxId}/fork`, { count: 1, name: 'x' }, 'name'],
      [`/v1/sandboxes/${sandboxId}/timeout`, { timeoutSec: 3, extra: true }, 'extra'],
    ];
    for (const [url, body, field] of cases) {
      assert.match(await refused(400, 'POST', url, body), new RegExp(`unknown field "${field}"`));
      assert.equal(documentAccepts('POST', url, body), false, `the document refuses ${JSON.stringify(body)}`);
    }
  });

  it('out-of-range numbers are refused, and the document refuses them too', async () => {
    const cases: Array<[string, Record<string, unknown>, RegExp]> = [
      ['/v1/sandboxes', { image: 'busybox', cpus: 0 }, /cpus must be >= 1/],
      ['/v1/sandboxes', { image: 'busybox', memoryMiB: 100 }, /memoryMiB must be >= 256/],
      ['/v1/sandboxes', { image: 'busybox', timeoutSec: 0 }, /timeoutSec/],
      ['/v1/sandboxes', { image: 'busybox', cpus: 1.5 }, /cpus must be integer/],
      ['/v1/sandboxes', { image: 'busybox', cpus: '2' }, /cpus must be integer/],
      [`/v1/sandboxes/${sandboxId}/fork`, { count: 0 }, /count must be >= 1/],
      [`/v1/sandboxes/${sandboxId}/fork`, { count: 101 }, /count must be <= 100/],
      [`/v1/sandboxes/${sandboxId}/exec`, { cmd: 'true', timeoutSec: 86_401 }, /timeoutSec must be <= 86400/],
      [`/v1/sandboxes/${sandboxId}/timeout`, { timeoutSec: -1 }, /timeoutSec must be >= 1/],
    ];
    for (const [url, body, message] of cases) {
      assert.match(await refused(400, 'POST', url, body), message);
      assert.equal(documentAccepts('POST', url, body), false, `the document refuses ${JSON.stringify(body)}`);
    }
    assert.ok(documentAccepts('POST', `/v1/sandboxes/${sandboxId}/fork`, { count: 100 }));
    assert.ok(documentAccepts('POST', `/v1/sandboxes/${sandboxId}/fork`, { count: 1 }));
  });

  it('create needs exactly one of image and snapshot, a valid image and ports', async () => {
    assert.match(await refused(400, 'POST', '/v1/sandboxes', {}), /exactly one of image and snapshot/);
    assert.match(await refused(400, 'POST', '/v1/sandboxes', { image: 'busybox', snapshot: 'x' }), /exactly one/);
    assert.match(await refused(404, 'POST', '/v1/sandboxes', { image: 'docker-archive:/does/not/exist.tar' }), /no such image archive/);
    await refused(400, 'POST', '/v1/sandboxes', { image: 'busybox', publish: ['notaport'] });
    await refused(400, 'POST', '/v1/sandboxes', { image: 'busybox', name: '../etc' });
    assert.match(await refused(404, 'POST', '/v1/sandboxes', { snapshot: 'nosuch' }), /no such snapshot/);
    assert.match(await refused(400, 'POST', '/v1/sandboxes', { snapshot: 'nosuch', cpus: 2 }), /cpus cannot be given with snapshot/);
  });

  it('a name in use is a 409', async () => {
    const name = core.find(sandboxId)!.name;
    assert.match(await refused(409, 'POST', '/v1/sandboxes', { image: 'busybox', name }), /already in use/);
  });

  it('unknown sandboxes, pids, snapshots and routes are 404s', async () => {
    assert.match(await refused(404, 'GET', '/v1/sandboxes/nosuch'), /no such sandbox: nosuch/);
    await refused(404, 'DELETE', '/v1/sandboxes/nosuch');
    await refused(404, 'POST', '/v1/sandboxes/nosuch/exec', { cmd: 'true' });
    await refused(404, 'GET', '/v1/sandboxes/nosuch/files?path=/etc/passwd');
    assert.match(await refused(404, 'POST', `/v1/sandboxes/${sandboxId}/processes/999/signal`, { signal: 'SIGTERM' }), /no such process: 999/);
    await refused(404, 'GET', `/v1/sandboxes/${sandboxId}/processes/999/events`);
    assert.match(await refused(404, 'DELETE', '/v1/snapshots/nosuch'), /no such snapshot/);
    assert.match(await refused(404, 'GET', '/v1/nothing'), /no route GET \/v1\/nothing/);
  });

  it('paths outside the container are refused before they reach the guest', async () => {
    assert.match(await refused(400, 'GET', `/v1/sandboxes/${sandboxId}/files?path=/tmp/../../etc/shadow`), /outside the container/);
    assert.match(await refused(400, 'GET', `/v1/sandboxes/${sandboxId}/files?path=etc/passwd`), /not absolute/);
    await refused(400, 'DELETE', `/v1/sandboxes/${sandboxId}/files?path=/..`);
    await refused(400, 'POST', `/v1/sandboxes/${sandboxId}/fs/rename`, { from: '/a', to: '/../b' });
    await refused(400, 'POST', `/v1/sandboxes/${sandboxId}/fs/mkdir`, { path: '/a/../../b' });
    await refused(400, 'GET', `/v1/sandboxes/${sandboxId}/fs/list?path=/x&other=1`);
  });

  it('a body over the limit is a 413', async () => {
    const calls = core.calls.length;
    const big = { image: 'busybox', metadata: { a: 'x'.repeat(1000) }, env: Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`K${i}`, 'y'.repeat(1000)])) };
    const r = await send('POST', '/v1/sandboxes', big);
    assert.equal(r.status, 413);
    assert.equal((r.json as { error: { code: string } }).error.code, 'payload_too_large');
    assert.equal(core.calls.length, calls);
    const put = await app.inject({ method: 'PUT', url: `/v1/sandboxes/${sandboxId}/files?path=/big`, headers: { ...auth, 'content-type': 'application/octet-stream' }, payload: Buffer.alloc(5000) });
    assert.equal(put.statusCode, 413);
    assert.equal((await send('GET', `/v1/sandboxes/${sandboxId}/fs/stat?path=/big`)).status, 404, 'nothing was written');
  });
});

describe('processes', () => {
  it('a buffered exec returns exit code and both streams, capped output says so', async () => {
    const body = { cmd: 'echo out; echo err >&2; exit 3' };
    assert.ok(documentAccepts('POST', `/v1/sandboxes/${sandboxId}/exec`, body));
    const r = await send('POST', `/v1/sandboxes/${sandboxId}/exec`, body);
    assert.equal(r.status, 200);
    assert.deepEqual({ ...(r.json as object), durationMs: 0, pid: 0 }, { pid: 0, exitCode: 3, signal: null, stdout: 'out\n', stderr: 'err\n', truncated: false, timedOut: false, durationMs: 0 });
  });

  it('exec timeoutSec kills the command', async () => {
    const r = await send('POST', `/v1/sandboxes/${sandboxId}/exec`, { cmd: ['sleep', '30'], timeoutSec: 1 });
    assert.equal(r.status, 200);
    assert.equal((r.json as { timedOut: boolean }).timedOut, true);
    assert.equal((r.json as { signal: string }).signal, 'SIGKILL');
  });

  it('stdin and signal refusals: no stdin, ended process, unknown signal', async () => {
    const r = await send('POST', `/v1/sandboxes/${sandboxId}/exec`, { cmd: 'true' });
    const pid = (r.json as { pid: number }).pid;
    const stdin = (payload: Buffer, pidOf = pid) => app.inject({ method: 'POST', url: `/v1/sandboxes/${sandboxId}/processes/${pidOf}/stdin`, headers: { ...auth, 'content-type': 'application/octet-stream' }, payload });
    let res = await stdin(Buffer.from('x'));
    assert.equal(res.statusCode, 409);
    assert.match(JSON.parse(res.body).error.message, /without stdin/);
    assert.match(await refused(409, 'POST', `/v1/sandboxes/${sandboxId}/processes/${pid}/signal`, { signal: 'SIGTERM' }), /has ended/);
    assert.match(await refused(400, 'POST', `/v1/sandboxes/${sandboxId}/processes/${pid}/signal`, { signal: 'SIGNOPE' }), /unknown signal/);
    assert.equal(documentAccepts('POST', `/v1/sandboxes/${sandboxId}/processes/${pid}/signal`, { signal: 'kill -9' }), false);
  });

  it('more running processes than the limit is a 429', async () => {
    const slow = [send('POST', `/v1/sandboxes/${sandboxId}/exec`, { cmd: ['sleep', '1'] }), send('POST', `/v1/sandboxes/${sandboxId}/exec`, { cmd: ['sleep', '1'] })];
    await new Promise((r) => setTimeout(r, 200));
    assert.match(await refused(429, 'POST', `/v1/sandboxes/${sandboxId}/exec`, { cmd: 'true' }), /already runs 2 processes/);
    await Promise.all(slow);
  });

  it('the limit holds for requests that arrive together while exec is slow to start (check and reserve are one step)', async () => {
    core.execDelayMs = 200;
    try {
      const results = await Promise.all(Array.from({ length: 5 }, () => send('POST', `/v1/sandboxes/${sandboxId}/exec`, { cmd: ['sleep', '0.3'] })));
      const statuses = results.map((r) => r.status).sort();
      assert.deepEqual(statuses, [200, 200, 429, 429, 429], results.map((r) => r.body).join('\n'));
    } finally {
      core.execDelayMs = 0;
    }
    // The slots were given back: the next one runs.
    assert.equal((await send('POST', `/v1/sandboxes/${sandboxId}/exec`, { cmd: 'true' })).status, 200);
  });
});

describe('snapshots, fork, timeout', () => {
  it('a snapshot tag in use is a 409; fork gives one entry per child with its parent', async () => {
    assert.equal((await send('POST', `/v1/sandboxes/${sandboxId}/snapshots`, { tag: 't1' })).status, 201);
    assert.match(await refused(409, 'POST', `/v1/sandboxes/${sandboxId}/snapshots`, { tag: 't1' }), /already exists/);
    await refused(400, 'POST', `/v1/sandboxes/${sandboxId}/snapshots`, { tag: '../x' });
    const fork = await send('POST', `/v1/sandboxes/${sandboxId}/fork`, { count: 3, metadata: { kind: 'child' } });
    assert.equal(fork.status, 201);
    const children = fork.json as unknown as Array<{ sandbox: { sandboxId: string; parentId: string; metadata: Record<string, string> } }>;
    assert.equal(children.length, 3);
    for (const c of children) {
      assert.equal(c.sandbox.parentId, sandboxId);
      assert.deepEqual(c.sandbox.metadata, { kind: 'child' });
    }
    const listed = await send('GET', '/v1/sandboxes?metadata.kind=child');
    assert.equal((listed.json as unknown as unknown[]).length, 3);
    for (const c of children) assert.equal((await send('DELETE', `/v1/sandboxes/${c.sandbox.sandboxId}`)).status, 204);
  });

  it('pause: a snapshot, the VM gone, listed as paused; other routes say so; resume brings the name back with its metadata', async () => {
    const created = await send('POST', '/v1/sandboxes', { image: 'busybox', name: 'pz', metadata: { keep: 'me' } });
    assert.equal(created.status, 201);
    const before = (created.json as { sandboxId: string }).sandboxId;
    const paused = await send('POST', '/v1/sandboxes/pz/pause');
    assert.equal(paused.status, 200, paused.body);
    assert.equal((paused.json as { state: string }).state, 'paused');
    assert.equal(core.find('pz'), undefined, 'the VM is gone');
    assert.ok(core.snapshots().some((x) => x.tag === 'paused-pz'));
    const listed = (await send('GET', '/v1/sandboxes?metadata.keep=me')).json as unknown as Array<{ name: string; state: string; sandboxId: string }>;
    assert.deepEqual(listed.map((x) => [x.name, x.state, x.sandboxId]), [['pz', 'paused', before]]);
    assert.equal(((await send('GET', `/v1/sandboxes/${before}`)).json as { state: string }).state, 'paused', 'found by the id it had');
    assert.match(await refused(409, 'POST', '/v1/sandboxes/pz/exec', { cmd: ['true'] }), /paused: resume it first/);
    assert.match(await refused(409, 'POST', '/v1/sandboxes/pz/pause'), /paused/);
    assert.match(await refused(409, 'DELETE', '/v1/snapshots/paused-pz'), /holds a paused sandbox/);
    assert.match(await refused(409, 'POST', `/v1/sandboxes/${sandboxId}/resume`, {}), /not paused/);
    await refused(404, 'POST', '/v1/sandboxes/nosuch/resume', {});
    const resumed = await send('POST', '/v1/sandboxes/pz/resume', { timeoutSec: 60 });
    assert.equal(resumed.status, 200, resumed.body);
    const sbx = resumed.json as { name: string; state: string; sandboxId: string; metadata: Record<string, string> };
    assert.deepEqual([sbx.name, sbx.state, sbx.metadata], ['pz', 'running', { keep: 'me' }]);
    assert.notEqual(sbx.sandboxId, before, 'a new VM');
    assert.ok(!core.snapshots().some((x) => x.tag === 'paused-pz'), 'its snapshot is gone');
    assert.equal(((await send('GET', '/v1/sandboxes?metadata.keep=me')).json as unknown as unknown[]).length, 1);
    // Paused again, then deleted while paused: record and snapshot go.
    assert.equal((await send('POST', '/v1/sandboxes/pz/pause')).status, 200);
    assert.equal((await send('DELETE', '/v1/sandboxes/pz')).status, 204);
    assert.equal((await send('GET', '/v1/sandboxes/pz')).status, 404);
    assert.ok(!core.snapshots().some((x) => x.tag === 'paused-pz'));
  });

  it('a sandbox past its timeout is removed', async () => {
    const expiring = await buildServer(core, { token: TOKEN, sweepMs: 100 });
    try {
      const created = await expiring.inject({ method: 'POST', url: '/v1/sandboxes', headers: auth, payload: { image: 'busybox', timeoutSec: 1 } });
      const id = JSON.parse(created.body).sandboxId as string;
      const deadline = Date.now() + 5000;
      while (core.find(id) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      assert.equal(core.find(id), undefined, 'removed after its timeout');
      assert.ok(core.find(sandboxId), 'the sandbox with the default timeout is still there');
    } finally {
      await expiring.close();
    }
  });
});
