/**
 * The API client over a Unix-socket HTTP server: JSON bodies, fault_message
 * errors, timeouts, and waiting for the socket.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FirecrackerApiClient, FirecrackerApiError, waitForSocket } from '../../src/vmm/firecracker/api-client';
import * as R from '../../src/vmm/firecracker/requests';
import { FakeFirecracker, type Exchange } from '../helpers/firecracker-fake';
import { loadSpecJudge } from '../helpers/firecracker-spec';

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fca-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function readRecord(file: string): Exchange[] {
  return fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Exchange);
}

describe('firecracker API client', () => {
  it('GET /version and GET / parse spec-valid responses; errors carry fault_message', async () => {
    const sock = path.join(dir, 'api1.sock');
    const record = path.join(dir, 'api1.jsonl');
    const fake = new FakeFirecracker(sock, 'vm1', { record, version: '1.16.1' });
    await fake.start();
    try {
      const c = new FirecrackerApiClient(sock);
      assert.equal(await c.version(), '1.16.1');
      const info = await c.describe();
      assert.equal(info.state, 'Not started');
      assert.equal(info.id, 'vm1');
      await assert.rejects(c.send(R.pauseVm()), (e: unknown) => {
        assert.ok(e instanceof FirecrackerApiError);
        assert.equal(e.status, 400);
        assert.equal(e.method, 'PATCH');
        assert.equal(e.path, '/vm');
        assert.match(e.faultMessage, /not supported before starting/);
        assert.match(e.message, /Firecracker PATCH \/vm failed \(HTTP 400\): The requested operation/);
        return true;
      });
      // The server (the spec's judge) rejects an unknown field with a 400 the client surfaces.
      await assert.rejects(c.request('PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 128, ht_enabled: false }), /ht_enabled/);
      const ex = readRecord(record);
      for (const e of ex) assert.deepEqual(e.responseProblems, [], `${e.method} ${e.path}: response off-spec`);
      assert.deepEqual(ex.map((e) => `${e.method} ${e.path} ${e.status}`), ['GET /version 200', 'GET / 200', 'PATCH /vm 400', 'PUT /machine-config 400']);
      // Every response body the client parsed is judged by the spec too.
      const judge = loadSpecJudge();
      assert.deepEqual(judge.checkResponse('GET', '/', 200, info), []);
    } finally {
      await fake.stop();
    }
  });

  it('sends JSON with the right headers and accepts an empty 204', async () => {
    const sock = path.join(dir, 'raw.sock');
    const seen: Array<{ method?: string; url?: string; type?: string; body: string }> = [];
    const srv = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        seen.push({ method: req.method, url: req.url, type: req.headers['content-type'], body });
        if (req.url === '/plain-error') {
          res.writeHead(500);
          res.end('not json at all');
          return;
        }
        res.writeHead(204);
        res.end();
      });
    });
    await new Promise<void>((r) => srv.listen(sock, () => r()));
    try {
      const c = new FirecrackerApiClient(sock);
      await c.send(R.instanceStart());
      assert.deepEqual(seen[0], { method: 'PUT', url: '/actions', type: 'application/json', body: '{"action_type":"InstanceStart"}' });
      await assert.rejects(c.request('GET', '/plain-error'), (e: unknown) => e instanceof FirecrackerApiError && e.status === 500 && e.faultMessage === 'not json at all');
    } finally {
      srv.close();
    }
  });

  it('times out when the VMM never answers', async () => {
    const sock = path.join(dir, 'hang.sock');
    const srv = http.createServer(() => {
      /* never answer */
    });
    await new Promise<void>((r) => srv.listen(sock, () => r()));
    try {
      const c = new FirecrackerApiClient(sock, { timeoutMs: 100 });
      await assert.rejects(c.request('GET', '/'), /no answer within 100 ms/);
    } finally {
      srv.closeAllConnections();
      srv.close();
    }
  });

  it('waitForSocket waits for the listener, times out, and stops early when told', async () => {
    const sock = path.join(dir, 'late.sock');
    const fake = new FakeFirecracker(sock, 'late');
    setTimeout(() => void fake.start(), 100);
    await waitForSocket(sock, { timeoutMs: 2000 });
    await fake.stop();
    await assert.rejects(waitForSocket(path.join(dir, 'never.sock'), { timeoutMs: 100 }), /did not appear within 100 ms/);
    await assert.rejects(waitForSocket(path.join(dir, 'never.sock'), { timeoutMs: 5000, abortReason: () => 'VMM exited' }), /VMM exited/);
  });
});
