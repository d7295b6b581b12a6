/**
 * envd's multipart upload (POST /files) streams each part to the guest's write as it arrives:
 * a body far larger than anything kept in memory goes through with the server's memory
 * bounded (sampled throughout), each part lands at its own path, in order; a part over the file
 * limit, a form without a file part, and too many parts are refused with 400 and one line.
 * The fake core's write is replaced by one that consumes at its own pace and counts, as the
 * guest's write does.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/api/server';
import { MAX_MULTIPART_FILES } from '../../src/api/e2b/envd/files-routes';
import type { FileEntry } from '../../src/protocol/files';
import { FakeCore } from '../helpers/fake-core';
import { makeE2bSandbox } from '../helpers/e2b-envd';

const NAME = 'upload-unit-1';
const MiB = 1024 * 1024;
let app: FastifyInstance;
let core: FakeCore;
let url = '';
let token = '';
/** What the (replaced) guest write received: path -> bytes, and whether each ended cleanly. */
const received = new Map<string, { bytes: number; ok: boolean; failed?: boolean }>();

before(async () => {
  core = new FakeCore();
  app = await buildServer(core, { token: 'unit-test-token-0123456789abcdef', sweepMs: 0, maxFileBytes: 160 * MiB });
  await app.listen({ host: '127.0.0.1', port: 0 });
  url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}/e2b/envd/files`;
  const vm = await core.create({ name: NAME, image: 'busybox', cpus: 1, memoryMiB: 256, env: {}, cmd: [], network: 'none', publish: [] });
  token = makeE2bSandbox(core.vmDir(vm.id), NAME);
  (core.files as { write: typeof core.files.write }).write = async (_id, p, body, maxBytes): Promise<FileEntry> => {
    const r: { bytes: number; ok: boolean; failed?: boolean } = { bytes: 0, ok: false };
    received.set(p, r);
    try {
      for await (const chunk of body) {
        r.bytes += chunk.length;
        if (r.bytes > maxBytes) throw new Error('over the limit');
        if (r.bytes % (8 * MiB) < chunk.length) await new Promise((res) => setTimeout(res, 1)); // a guest's pace
      }
    } catch (err) {
      r.failed = true;
      throw err;
    }
    r.ok = true;
    return { name: p.split('/').pop()!, path: p, type: 'file', size: r.bytes, mode: 0o644, mtime: new Date().toISOString() };
  };
});

after(async () => {
  await app.close();
});

const BOUNDARY = '----shoal-upload-test-boundary';

/** A multipart body made as it is sent (never whole in memory): parts of `size` bytes each. */
function multipart(parts: Array<{ name: string; filename?: string; size: number }>): Readable {
  const chunk = Buffer.alloc(256 * 1024, 0x61);
  async function* gen(): AsyncGenerator<Buffer> {
    for (const part of parts) {
      const disposition = `form-data; name="${part.name}"${part.filename !== undefined ? `; filename="${part.filename}"` : ''}`;
      yield Buffer.from(`--${BOUNDARY}\r\nContent-Disposition: ${disposition}\r\nContent-Type: application/octet-stream\r\n\r\n`);
      for (let left = part.size; left > 0; left -= chunk.length) yield left >= chunk.length ? chunk : chunk.subarray(0, left);
      yield Buffer.from('\r\n');
    }
    yield Buffer.from(`--${BOUNDARY}--\r\n`);
  }
  return Readable.from(gen(), { objectMode: false, highWaterMark: 256 * 1024 });
}

/** POSTs the body with Node's http client (which writes at the socket's pace). */
async function post(body: Readable): Promise<{ status: number; json: unknown }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: 'POST',
      headers: { 'content-type': `multipart/form-data; boundary=${BOUNDARY}`, 'x-access-token': token, 'e2b-sandbox-id': NAME },
    }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => { text += d.toString(); });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) as unknown }));
    });
    req.on('error', reject);
    // The server may answer (an error) before it read the whole body: the send then just stops.
    pipeline(body, req).catch(() => undefined);
  });
}

describe('envd multipart upload, streamed', { timeout: 120_000 }, () => {
  // The client is Node's http (not fetch, whose upload of a stream ran ahead of the socket and
  // held the body in this same process, hiding what the server does).
  it('two parts of 150 MiB: each reaches its path whole, in order, and the server never holds them', async (t) => {
    global.gc?.();
    const base = process.memoryUsage().rss;
    let peak = base;
    const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 20);
    let result: { status: number; json: unknown };
    try {
      result = await post(multipart([{ name: 'file', filename: '/big/one.bin', size: 150 * MiB }, { name: 'file', filename: '/big/two.bin', size: 150 * MiB }]));
    } finally {
      clearInterval(sampler);
    }
    assert.equal(result.status, 200, JSON.stringify(result.json));
    assert.deepEqual((result.json as Array<{ path: string }>).map((e) => e.path), ['/big/one.bin', '/big/two.bin']);
    assert.deepEqual(received.get('/big/one.bin'), { bytes: 150 * MiB, ok: true });
    assert.deepEqual(received.get('/big/two.bin'), { bytes: 150 * MiB, ok: true });
    const growthMiB = (peak - base) / MiB;
    t.diagnostic(`RSS grew ${growthMiB.toFixed(0)} MiB for a 300 MiB upload`);
    assert.ok(growthMiB < 120, `RSS grew ${growthMiB.toFixed(0)} MiB for a 300 MiB upload`);
  });

  it('a part over the file limit: 400, and its write does not complete', async () => {
    const result = await post(multipart([{ name: 'file', filename: '/big/huge.bin', size: 161 * MiB }]));
    assert.equal(result.status, 400, JSON.stringify(result.json));
    assert.match((result.json as { message: string }).message, /larger than/);
    assert.equal(received.get('/big/huge.bin')?.ok, false);
  });

  it('a client that goes away mid-part: the part\'s write fails, nothing hangs', async () => {
    const body = multipart([{ name: 'file', filename: '/big/cut.bin', size: 100 * MiB }]);
    const req = http.request(url, { method: 'POST', headers: { 'content-type': `multipart/form-data; boundary=${BOUNDARY}`, 'x-access-token': token, 'e2b-sandbox-id': NAME } });
    req.on('error', () => undefined);
    pipeline(body, req).catch(() => undefined);
    const deadline = Date.now() + 10_000;
    while ((received.get('/big/cut.bin')?.bytes ?? 0) < 4 * MiB) {
      if (Date.now() > deadline) throw new Error('the upload did not start');
      await new Promise((r) => setTimeout(r, 10));
    }
    req.destroy();
    body.destroy();
    // The write ends (its body fails) rather than waiting forever for the rest.
    const end = Date.now() + 10_000;
    while (received.get('/big/cut.bin')!.failed !== true) {
      if (Date.now() > end) throw new Error(`the write still waits: ${JSON.stringify(received.get('/big/cut.bin'))}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(received.get('/big/cut.bin')!.ok, false);
  });

  it('no file part, or too many parts: 400 with one line', async () => {
    const none = await post(multipart([{ name: 'other', size: 10 }]));
    assert.equal(none.status, 400);
    assert.match((none.json as { message: string }).message, /no "file" part/);
    const many = await post(multipart(Array.from({ length: MAX_MULTIPART_FILES + 1 }, (_, i) => ({ name: 'file', filename: `/many/${i}`, size: 1 }))));
    assert.equal(many.status, 400);
    assert.match((many.json as { message: string }).message, /at most 100 files/);
  });
});
