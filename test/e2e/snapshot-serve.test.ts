/**
 * `shoal snapshot serve` as a process, driven by peers that play Firecracker's side of the Uffd
 * handshake exactly as documented (test/helpers/uffd-peer.ts, real userfaultfd): faulted pages
 * carry the snapshot's bytes, two clones at once are served, a clone that dies does not stop
 * the server, balloon removals read back as zeros, and SIGTERM ends it leaving nothing behind.
 * `snapshot run --pid` finds the server and refuses a QEMU snapshot with one line. No VM boots:
 * the snapshot directory is written here.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { MANIFEST, snapshotsDir } from '../../src/snapshot/store';
import { StateStore } from '../../src/state/store';
import { UffdPeer } from '../helpers/uffd-peer';
import { SHOAL_BIN, ShoalSandbox } from '../helpers/shoal-cli';

const PAGE = 4096;
const sandbox = new ShoalSandbox('serve');
const memory = crypto.randomBytes(64 * PAGE);
const peers: UffdPeer[] = [];
let server: ChildProcess | undefined;

before(() => {
  // A snapshot as `snapshot create` publishes it; only the memory file matters to the server.
  const dir = path.join(snapshotsDir(new StateStore(sandbox.stateDir)), 'mem');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'memory.raw'), memory);
  fs.writeFileSync(path.join(dir, MANIFEST), JSON.stringify({ version: 1, tag: 'mem', backend: 'qemu', accel: 'tcg', source: { id: 'x', name: 'x' }, config: { name: 'x' } }));
});

after(async () => {
  for (const peer of peers) await peer.kill().catch(() => undefined);
  server?.kill('SIGKILL');
  sandbox.cleanup();
});

function startServer(): Promise<{ pid: number; tag: string; socket: string }> {
  server = spawn(SHOAL_BIN, ['snapshot', 'serve', 'mem', '--json'], { env: sandbox.env(), stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    server!.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(JSON.parse(out.split('\n')[0]!) as { pid: number; tag: string; socket: string });
    });
    server!.once('exit', (code) => reject(new Error(`snapshot serve exited (${code})`)));
  });
}

function page(n: number): Buffer {
  return memory.subarray(n * PAGE, (n + 1) * PAGE);
}

test('snapshot serve answers Firecracker-like clones from the snapshot memory, survives one dying, and stops cleanly', async () => {
  const registration = await startServer();
  assert.equal(registration.tag, 'mem');
  assert.equal(registration.pid, server!.pid);
  const registryFile = path.join(sandbox.stateDir, 'serve', `${registration.pid}.json`);
  assert.ok(fs.existsSync(registryFile));
  assert.equal(fs.statSync(registration.socket).mode & 0o777, 0o600);

  // Two regions, out of file order, as Firecracker maps guest memory.
  const regions = [{ size: 16 * PAGE, offset: 32 * PAGE }, { size: 8 * PAGE, offset: 0 }];
  const a = UffdPeer.spawn();
  const b = UffdPeer.spawn();
  peers.push(a, b);
  await Promise.all([a.setup({ socketPath: registration.socket, regions }), b.setup({ socketPath: registration.socket, regions })]);
  assert.ok((await a.read(0, 3 * PAGE, PAGE)).equals(page(35)));
  assert.ok((await b.read(1, 5 * PAGE, PAGE)).equals(page(5)));
  assert.ok((await a.read(0, 0, 16 * PAGE)).equals(memory.subarray(32 * PAGE, 48 * PAGE)));

  // The balloon gives a page back: it reads as zeros afterwards.
  await a.dontneed(1, 2 * PAGE, PAGE);
  assert.ok((await a.read(1, 2 * PAGE, PAGE)).equals(Buffer.alloc(PAGE)));

  // One clone dies mid-life; the other, and a new one, are still served.
  await a.kill();
  assert.ok((await b.read(0, 15 * PAGE, PAGE)).equals(page(47)));
  const c = UffdPeer.spawn();
  peers.push(c);
  await c.setup({ socketPath: registration.socket, regions });
  assert.ok((await c.read(1, 7 * PAGE, PAGE)).equals(page(7)));

  // `snapshot run --pid` finds this server; a QEMU snapshot is refused in one line.
  const run = await sandbox.run(['snapshot', 'run', '--snapshot', 'mem', '--pid', String(registration.pid)]);
  assert.notEqual(run.code, 0);
  assert.match(run.stderr.toString(), /Firecracker's Uffd backend; snapshot mem is a qemu snapshot/);
  assert.equal(run.stderr.toString().trim().split('\n').length, 1);
  const wrongPid = await sandbox.run(['snapshot', 'run', '--snapshot', 'mem', '--pid', '1']);
  assert.match(wrongPid.stderr.toString(), /no `shoal snapshot serve` runs as pid 1/);

  await b.kill();
  await c.kill();
  server!.kill('SIGTERM');
  const code = await new Promise<number | null>((resolve) => server!.once('exit', resolve));
  assert.equal(code, 0);
  assert.ok(!fs.existsSync(registration.socket), 'the socket is removed');
  assert.ok(!fs.existsSync(registryFile), 'the registration is removed');
});

test('snapshot serve of a missing snapshot is a one-line error', async () => {
  const result = await sandbox.run(['snapshot', 'serve', 'nope']);
  assert.notEqual(result.code, 0);
  assert.equal(result.stderr.toString().trim(), 'shoal: no such snapshot: nope');
});
