/**
 * The real supervisor and CLI against the fake Firecracker (test/helpers/firecracker-fake.ts)
 * with a fake guest agent that speaks shoal's protocol and simulates podman (nothing runs on the
 * host). It shows what a real v1.16.1 does to a VM that is snapshotted: the vsock transport is
 * reset (open connections dropped, the next connect must be fresh), so a supervisor that goes
 * on with its old agent stream loses its VM (issue 15, item 1).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { StateStore } from '../../src/state/store';
import type { VmRecord } from '../../src/state/vm-record';
import { writeFakeBinary } from '../helpers/firecracker-fake';

const root = path.join(__dirname, '..', '..', '..');
const assetsMissing = fs.existsSync(path.join(process.env.SHOAL_CACHE_DIR ?? '/var/cache/shoal', 'assets.json')) ? false : 'guest assets not set up (`shoal setup`); the supervisor loads them';

let dir = '';
let env: NodeJS.ProcessEnv = {};
let store: StateStore;

before(() => {
  dir = fs.mkdtempSync('/tmp/fcs-');
  const bin = writeFakeBinary(path.join(dir, 'bin'));
  env = { ...process.env, SHOAL_STATE_DIR: path.join(dir, 'state'), SHOAL_FIRECRACKER: bin, FAKE_FC_AGENT: 'fake', FAKE_FC_RECORD: path.join(dir, 'record.jsonl') };
  store = new StateStore(env.SHOAL_STATE_DIR);
});

after(() => {
  if (!dir) return;
  spawnSync(process.execPath, [path.join(root, 'bin', 'shoal'), 'rm', '-f', 'fc1'], { env, stdio: 'ignore' });
  fs.rmSync(dir, { recursive: true, force: true });
});

function shoal(args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [path.join(root, 'bin', 'shoal'), ...args], { env, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function until(what: string, check: () => boolean, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(store.find('fc1'))}`);
    await sleep(100);
  }
}

describe('the supervisor with a Firecracker VM (fake Firecracker, fake agent)', { skip: assetsMissing }, () => {
  it('item 1: snapshot create keeps the source running: after the vsock reset it reconnects and follows its container again', async () => {
    const image = path.join(dir, 'image.tar');
    fs.writeFileSync(image, 'not really an archive: the fake agent only reads it');
    const id = store.newId();
    store.claimName('fc1', id);
    const record: VmRecord = {
      id,
      config: { name: 'fc1', image: `docker-archive:${image}`, command: [], env: {}, cpus: 1, memoryMiB: 256, interactive: false, detach: true, autoRemove: false, network: 'none', publish: [], imageCache: false },
      backend: 'firecracker',
      accel: 'kvm',
      state: 'creating',
      createdAt: new Date().toISOString(),
    };
    store.write(record);
    const log = fs.openSync(path.join(dir, 'supervisor.log'), 'a');
    spawn(process.execPath, [path.join(root, 'dist', 'src', 'supervisor', 'main.js'), id], { detached: true, stdio: ['ignore', log, log], env }).unref();
    fs.closeSync(log);
    await until('the VM to run', () => store.read(id)?.state === 'running');

    const create = shoal(['snapshot', 'create', 'fc1', '--tag', 't1']);
    assert.equal(create.code, 0, create.stderr);
    const fcCalls = fs.readFileSync(env.FAKE_FC_RECORD!, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { method: string; path: string; status: number });
    assert.ok(fcCalls.some((c) => c.path === '/snapshot/create' && c.status === 204), 'the snapshot went through Firecracker');
    await sleep(500);
    assert.equal(store.read(id)?.state, 'running', `the source survives its snapshot: ${store.read(id)?.error ?? ''}`);
    const exec = shoal(['exec', '--vm', 'fc1', '--', 'echo', 'still', 'here']);
    assert.equal(exec.code, 0, exec.stderr);
    assert.equal(exec.stdout, 'still here\n');

    // The main container is followed on the new session: its exit (podman stop -> 143) is the VM's.
    const stop = shoal(['stop', 'fc1']);
    assert.equal(stop.code, 0, stop.stderr);
    await until('the VM to stop', () => ['stopped', 'failed'].includes(store.read(id)?.state ?? ''));
    const final = store.read(id)!;
    assert.equal(final.state, 'stopped', final.error);
    assert.equal(final.exitCode, 143);
  });
});
