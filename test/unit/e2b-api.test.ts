/**
 * E2B's sandbox API (src/api/e2b/) driven by the official `e2b` SDK over real HTTP, against a
 * fake core (no VM): the routes, shapes and status codes the SDK relies on, templates built
 * once and cloned after, pause/connect through the paused store (also across a server restart),
 * fork, snapshots, pagination, autoPause on expiry, and the API key.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuthenticationError, NotFoundError, Sandbox, SandboxError } from 'e2b';
import type { FastifyInstance } from 'fastify';
import { WebSocket, WebSocketServer } from 'ws';
import { buildServer } from '../../src/api/server';
import { FakeCore } from '../helpers/fake-core';
import { ShoalError } from '../../src/util/errors';
import type { SandboxSpec, VmView } from '../../src/api/core';
import { tempDir } from '../helpers/temp-dir';

const TOKEN = 'a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5';
const IMAGE = 'docker.io/library/busybox:latest';

let core: FakeCore;
let stateDir: string;
let app: FastifyInstance;
let port = 0;
let opts: { apiUrl: string; apiKey: string; sandboxUrl: string };

async function start(sweepMs = 0): Promise<void> {
  app = await buildServer(core, { token: TOKEN, sweepMs, e2b: { stateDir, templates: new Map([['busy', IMAGE]]), domain: 'sbx.test' } });
  // A restart listens where the last one did: the SDK's Sandbox objects keep their URL.
  const url = await app.listen({ host: '127.0.0.1', port });
  port = Number(new URL(url).port);
  opts = { apiUrl: `${url}/e2b`, apiKey: `e2b_${TOKEN}`, sandboxUrl: `${url}/e2b/envd` };
  // The SDK's pooled keep-alive connections to the closed server fail once each: used up here.
  for (let i = 0; i < 8; i++) await Sandbox.list(opts).nextItems().catch(() => undefined);
}

before(async () => {
  core = new FakeCore();
  stateDir = tempDir('shoal-e2b-state-');
  await start();
});

after(async () => {
  await app.close();
});

describe('E2B sandbox API (fake core)', () => {
  let first: Sandbox;

  it('creates from an alias: the first create builds the template snapshot, later ones only clone', async () => {
    first = await Sandbox.create('busy', { ...opts, metadata: { suite: 'unit', n: '1' }, envs: { A: 'b' } });
    assert.match(first.sandboxId, /^i[0-9a-f]{20}$/);
    const built = core.calls.filter((c) => c.startsWith('snapshot ')).map((c) => c.split(' ')[2]);
    assert.deepEqual(built, ['e2b-template-busy']);
    const before2 = core.calls.length;
    const second = await Sandbox.create('busy', { ...opts, metadata: { suite: 'unit', n: '2' } });
    assert.deepEqual(core.calls.slice(before2), [`create ${second.sandboxId}`], 'a clone, no build');
    const facts = JSON.parse(fs.readFileSync(path.join(core.vmDir(core.find(first.sandboxId)!.id), 'e2b.json'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(facts.envVars, { A: 'b' });
    assert.equal(facts.envdAccessToken, (first as unknown as { envdAccessToken: string }).envdAccessToken);
    assert.equal(first.getHost(8080), `8080-${first.sandboxId}.sbx.test`);
  });

  it('getInfo and list with a metadata query, state filter and pagination', async () => {
    const info = await Sandbox.getInfo(first.sandboxId, opts);
    assert.equal(info.templateId, 'busy');
    assert.equal(info.name, 'busy');
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { suite: 'unit', n: '1' });
    const found = await Sandbox.list({ ...opts, query: { metadata: { n: '1' } } }).nextItems();
    assert.deepEqual(found.map((s) => s.sandboxId), [first.sandboxId]);
    const pager = Sandbox.list({ ...opts, limit: 1, query: { metadata: { suite: 'unit' }, state: ['running'] } });
    const ids: string[] = [];
    while (pager.hasNext) ids.push(...(await pager.nextItems()).map((s) => s.sandboxId));
    assert.equal(ids.length, 2);
    assert.equal(new Set(ids).size, 2);
  });

  it('logs are the container\'s lines; metrics an empty list', async () => {
    core.writeLog(core.find(first.sandboxId)!.id, [{ stream: 'stdout', data: Buffer.from('one\ntwo\n') }, { stream: 'stderr', data: Buffer.from('oops\n') }]);
    const r = await fetch(`${opts.apiUrl}/v2/sandboxes/${first.sandboxId}/logs`, { headers: { 'x-api-key': opts.apiKey } });
    const body = await r.json() as { logs: Array<{ message: string; level: string }> };
    assert.deepEqual(body.logs.map((l) => `${l.level}:${l.message}`), ['info:one', 'info:two', 'error:oops']);
    assert.deepEqual(await first.getMetrics(), []);
    await assert.rejects(Sandbox.getMetrics('inosuch', opts), NotFoundError);
  });

  it('setTimeout moves endAt', async () => {
    await first.setTimeout(3_600_000);
    const info = await first.getInfo();
    assert.ok(Math.abs(info.endAt.getTime() - (Date.now() + 3_600_000)) < 10_000);
  });

  it('pause keeps the sandbox (listed paused, survives a server restart); connect resumes the same id', async () => {
    assert.equal(await first.pause(), true);
    assert.equal(core.find(first.sandboxId), undefined, 'no VM while paused');
    assert.equal(await Sandbox.pause(first.sandboxId, opts), false, 'already paused');
    await app.close();
    await start();
    const paused = await Sandbox.list({ ...opts, query: { state: ['paused'] } }).nextItems();
    assert.deepEqual(paused.map((s) => s.sandboxId), [first.sandboxId]);
    assert.deepEqual(paused[0]!.metadata, { suite: 'unit', n: '1' });
    const again = await Sandbox.connect(first.sandboxId, opts);
    assert.equal(again.sandboxId, first.sandboxId);
    assert.equal((await again.getInfo()).state, 'running');
    assert.ok(!core.snapshots().some((s) => s.tag === `e2b-paused-${first.sandboxId}`), 'the pause snapshot is gone');
    assert.equal(fs.readdirSync(path.join(stateDir, 'paused')).length, 0);
  });

  it('forks', async () => {
    const children = await first.fork({ count: 2 } as never) as unknown as Sandbox[];
    assert.equal(children.length, 2);
    for (const child of children) {
      assert.ok(child instanceof Sandbox);
      const info = await Sandbox.getInfo(child.sandboxId, opts);
      assert.deepEqual(info.metadata, { suite: 'unit', n: '1' });
      await child.kill();
    }
  });

  it('snapshots: create, list, create a sandbox from one, delete', async () => {
    const snap = await first.createSnapshot();
    assert.match(snap.snapshotId, /^snap-/);
    const listed = await Sandbox.listSnapshots({ ...opts, sandboxId: first.sandboxId }).nextItems();
    assert.deepEqual(listed.map((s) => s.snapshotId), [snap.snapshotId]);
    const all = await Sandbox.listSnapshots(opts).nextItems();
    assert.ok(!all.some((s) => s.snapshotId.startsWith('e2b-')), 'shoal\'s own snapshots are not listed');
    const fromSnap = await Sandbox.create(snap.snapshotId, opts);
    assert.equal((await fromSnap.getInfo()).templateId, snap.snapshotId);
    await fromSnap.kill();
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId, opts), true);
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId, opts), false);
  });

  it('kill, then NotFoundError; the default template needs configuring', async () => {
    assert.equal(await Sandbox.kill(first.sandboxId, opts), true);
    await assert.rejects(Sandbox.getInfo(first.sandboxId, opts), NotFoundError);
    assert.equal(await Sandbox.kill(first.sandboxId, opts), false);
    await assert.rejects(Sandbox.create(opts), (err: unknown) => err instanceof SandboxError && /--template base=IMAGE/.test((err as Error).message));
  });

  it('refuses a wrong key with AuthenticationError, and the native API still wants its bearer token', async () => {
    await assert.rejects(Sandbox.list({ ...opts, apiKey: 'e2b_wrong' }).nextItems(), AuthenticationError);
    const r = await fetch(`${opts.apiUrl.replace('/e2b', '')}/v1/sandboxes`, { headers: { 'x-api-key': `e2b_${TOKEN}` } });
    assert.equal(r.status, 401);
    const e2bOnBearer = await fetch(`${opts.apiUrl}/v2/sandboxes`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(e2bOnBearer.status, 401);
    assert.deepEqual(Object.keys(await e2bOnBearer.json() as object).sort(), ['code', 'message']);
  });

  it('autoPause: an expired sandbox is paused, not killed; without it, killed', async () => {
    await app.close();
    await start(50);
    const pausing = await Sandbox.create('busy', { ...opts, timeoutMs: 1000, lifecycle: { onTimeout: 'pause' } });
    const dying = await Sandbox.create('busy', { ...opts, timeoutMs: 1000 });
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      const states = (await Sandbox.list(opts).nextItems()).map((s) => `${s.sandboxId}:${s.state}`);
      if (states.includes(`${pausing.sandboxId}:paused`) && !states.some((s) => s.startsWith(dying.sandboxId))) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal((await Sandbox.getInfo(pausing.sandboxId, opts)).state, 'paused');
    await assert.rejects(Sandbox.getInfo(dying.sandboxId, opts), NotFoundError);
    await Sandbox.kill(pausing.sandboxId, opts);
    assert.deepEqual(await Sandbox.list(opts).nextItems().then((l) => l.filter((s) => s.sandboxId === pausing.sandboxId)), []);
  });

  it('getHost: HTTP and WebSocket to a port in the sandbox by Host, the traffic token when public traffic is off', async () => {
    // The "guest" port: with the fake core, the guest relay runs on this host.
    const target = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (d: Buffer) => chunks.push(d));
      req.on('end', () => res.end(JSON.stringify({ method: req.method, url: req.url, body: Buffer.concat(chunks).toString(), token: req.headers['e2b-traffic-access-token'] ?? null })));
    });
    const wss = new WebSocketServer({ server: target });
    wss.on('connection', (ws) => ws.on('message', (data) => ws.send(`echo:${String(data)}`)));
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', () => r()));
    const guestPort = (target.address() as { port: number }).port;
    try {
      const open = await Sandbox.create('busy', opts);
      const closed = await Sandbox.create('busy', { ...opts, network: { allowPublicTraffic: false } });
      const request = (host: string, headers: Record<string, string> = {}, body = ''): Promise<{ status: number; body: string }> => new Promise((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port, path: '/some/path?q=1', method: 'POST', headers: { host, ...headers } }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (d: Buffer) => chunks.push(d));
          res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
        });
        req.on('error', reject);
        req.end(body);
      });
      const through = await request(open.getHost(guestPort), {}, 'payload');
      assert.equal(through.status, 200, through.body);
      assert.deepEqual(JSON.parse(through.body), { method: 'POST', url: '/some/path?q=1', body: 'payload', token: null });
      assert.equal((await request(`${guestPort}-inosuchsandbox.sbx.test`)).status, 502);
      assert.equal((await request(closed.getHost(guestPort))).status, 401);
      const token = (closed as unknown as { trafficAccessToken: string }).trafficAccessToken;
      assert.equal((await request(closed.getHost(guestPort), { 'e2b-traffic-access-token': token })).status, 200);
      // The API itself still answers on its own host.
      assert.equal((await request('127.0.0.1')).status, 401, 'the native API, which wants its token');
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { host: open.getHost(guestPort) } });
      const reply = await new Promise<string>((resolve, reject) => {
        ws.on('open', () => ws.send('hi'));
        ws.on('message', (data) => resolve(String(data)));
        ws.on('error', reject);
      });
      assert.equal(reply, 'echo:hi');
      ws.close();
      await open.kill();
      await closed.kill();
    } finally {
      wss.close();
      target.closeAllConnections();
      target.close();
    }
  });

  it('a template whose image cannot boot is a 503 (ServiceBusyError) naming it, and nothing is left', async () => {
    class FailingCore extends FakeCore {
      override async create(spec: SandboxSpec): Promise<VmView> {
        if (spec.image !== undefined) throw new ShoalError('image load failed: no such image');
        return super.create(spec);
      }
    }
    const failing = new FailingCore();
    const server = await buildServer(failing, { token: TOKEN, sweepMs: 0, e2b: { stateDir: tempDir('shoal-e2b-state-'), templates: new Map([['broken', 'example.com/none:1']]), domain: null } });
    const url = await server.listen({ host: '127.0.0.1', port: 0 });
    try {
      await assert.rejects(Sandbox.create('broken', { apiUrl: `${url}/e2b`, apiKey: `e2b_${TOKEN}` }), (err: unknown) => (err as Error).name === 'ServiceBusyError' && /template broken \(example.com\/none:1\) could not be built: image load failed/.test((err as Error).message));
      assert.deepEqual(failing.list(), []);
      assert.deepEqual(failing.snapshots(), []);
    } finally {
      await server.close();
    }
  });
});
