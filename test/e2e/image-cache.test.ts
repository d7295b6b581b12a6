/**
 * The automatic image cache: the first run of an image saves a snapshot taken after the image is
 * loaded; a second run with the same busybox.ref, command, env and shape restores it; a change misses;
 * --no-snapshot bypasses it; a VM restored from the cache is a full VM (own hostname, forkable).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { busyboxImageForFile } from '../helpers/images';
import { freePort, httpGet } from '../helpers/http';
import { ShoalSandbox, type LsEntry } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('cache');
const busybox = busyboxImageForFile();

after(() => {
  sandbox.cleanup();
});

async function cacheState(name: string): Promise<string | null | undefined> {
  return (await sandbox.vm(name))?.imageCache;
}

test('a second run of the same busybox.ref, command and env restores the cache; a change misses it', async () => {
  const script = 'echo "A $X"; head -c 8 /dev/urandom | od -An -tx1';
  const first = await sandbox.run(['run', '--name', 'first', busybox.ref, '--', 'sh', '-c', script]);
  assert.equal(first.code, 0, first.stderr.toString());
  assert.equal(await cacheState('first'), 'miss');

  const second = await sandbox.run(['run', '--name', 'second', busybox.ref, '--', 'sh', '-c', script]);
  assert.equal(second.code, 0, second.stderr.toString());
  assert.equal(await cacheState('second'), 'hit');
  const [firstLine, firstRandom] = first.stdout.toString().split('\n');
  const [secondLine, secondRandom] = second.stdout.toString().split('\n');
  assert.equal(secondLine, firstLine);
  assert.notEqual(secondRandom, firstRandom, 'a restored VM must not repeat its source\'s random values');

  const env = await sandbox.run(['run', '--name', 'env', '-e', 'X=1', busybox.ref, '--', 'sh', '-c', script]);
  assert.equal(env.stdout.toString().split('\n')[0], 'A 1');
  assert.equal(await cacheState('env'), 'miss');

  const command = await sandbox.run(['run', '--name', 'command', busybox.ref, '--', 'sh', '-c', 'echo B']);
  assert.equal(command.stdout.toString(), 'B\n');
  assert.equal(await cacheState('command'), 'miss');

  const off = await sandbox.run(['run', '--name', 'off', '--no-snapshot', busybox.ref, '--', 'sh', '-c', script]);
  assert.equal(off.code, 0, off.stderr.toString());
  assert.equal(await cacheState('off'), null);

  // Three keys were saved (script, script with X=1, echo B), each complete: manifest and files.
  const entries = fs.readdirSync(path.join(sandbox.stateDir, 'image-cache'));
  assert.equal(entries.length, 3, entries.join(' '));
  for (const entry of entries) {
    assert.deepEqual(fs.readdirSync(path.join(sandbox.stateDir, 'image-cache', entry)).sort(), ['memory.raw', 'scratch.img', 'snapshot.json', 'state.bin']);
  }
});

test('a VM restored from the cache has its own hostname, and can be forked', async () => {
  for (const name of ['warm', 'hot']) {
    const run = await sandbox.run(['run', '-d', '--name', name, busybox.ref, '--', 'sleep', '600']);
    assert.equal(run.code, 0, run.stderr.toString());
  }
  assert.equal(await cacheState('hot'), 'hit');
  const hostname = await sandbox.run(['exec', '--vm', 'hot', '--', 'hostname']);
  assert.equal(hostname.stdout.toString(), 'hot\n');
  const inContainer = await sandbox.run(['exec', 'hot', '--', 'sh', '-c', 'ps -o comm | grep -c sleep']);
  assert.equal(inContainer.stdout.toString().trim(), '1', inContainer.stderr.toString());
  // A cache-restored VM can be forked like any other (until issue 13 this was refused): the
  // child has the container running, its own hostname, and what 'hot' wrote.
  await sandbox.run(['exec', 'hot', '--', 'sh', '-c', 'echo from-hot > /tmp/mark']);
  const fork = await sandbox.run(['fork', 'hot', '-n', '1'], { timeoutMs: 180_000 });
  assert.equal(fork.code, 0, fork.stderr.toString());
  assert.equal(fork.stdout.toString(), 'hot-1\n');
  const child = await sandbox.run(['exec', 'hot-1', '--', 'sh', '-c', 'cat /tmp/mark; ps -o comm | grep -c sleep']);
  assert.equal(child.stdout.toString(), 'from-hot\n1\n', child.stderr.toString());
  assert.equal((await sandbox.run(['exec', '--vm', 'hot-1', '--', 'hostname'])).stdout.toString(), 'hot-1\n');
  assert.equal((await sandbox.run(['exec', 'hot', '--', 'cat', '/tmp/mark'])).stdout.toString(), 'from-hot\n');
  const ids = (await sandbox.json<LsEntry[]>(['ls', '--json'])).map((v) => v.id);
  const rm = await sandbox.run(['rm', '-f', 'warm', 'hot', 'hot-1'], { timeoutMs: 60_000 });
  assert.equal(rm.code, 0, rm.stderr.toString());
  assert.deepEqual(sandbox.processes(), []);
  assert.deepEqual(ids.filter((id) => fs.existsSync(`/dev/shm/shoal-${id}.ram`)), []);
});

test('--health-check: once the app answers, its running state is snapshotted; a later run starts from it, already running', async () => {
  // The app draws a random id when it starts: the same id later proves it did not start again.
  // It also says it is alive every second, so a restored run's log shows the handed-over output.
  const app = 'mkdir -p /www; cat /proc/sys/kernel/random/uuid > /www/id; (while true; do echo "alive $(cat /www/id)"; sleep 1; done) & exec httpd -f -p 8080 -h /www';
  const check = 'http://localhost:8080/id';
  const [p1, p2] = [await freePort(), await freePort()];

  const first = await sandbox.run(['run', '-d', '--name', 'app1', '--health-check', check, '-p', `127.0.0.1:${p1}:8080`, busybox.ref, 'sh', '-c', app]);
  assert.equal(first.code, 0, first.stderr.toString());
  const deadline = Date.now() + 180_000;
  let saved: string | null | undefined;
  while (Date.now() < deadline) {
    saved = (await sandbox.json<(LsEntry & { startupSnapshot: string | null })[]>(['ls', '--json'])).find((v) => v.name === 'app1')?.startupSnapshot;
    if (saved === 'saved') break;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  assert.equal(saved, 'saved');
  const id = await httpGet(p1, '/id');
  assert.match(id ?? '', /^[0-9a-f-]{36}\n$/);

  const second = await sandbox.run(['run', '-d', '--name', 'app2', '--health-check', check, '-p', `127.0.0.1:${p2}:8080`, busybox.ref, 'sh', '-c', app]);
  assert.equal(second.code, 0, second.stderr.toString());
  const vm = (await sandbox.json<(LsEntry & { startupSnapshot: string | null })[]>(['ls', '--json'])).find((v) => v.name === 'app2');
  assert.equal(vm?.startupSnapshot, 'restored');
  assert.equal(vm?.state, 'running');
  // Already serving, with the first run's id: restored, not started again.
  assert.equal(await httpGet(p2, '/id'), id);
  const exec = await sandbox.run(['exec', 'app2', '--', 'cat', '/www/id']);
  assert.equal(exec.stdout.toString(), id);
  // The restored container's output from now on is this VM's: in its log.
  let logs = '';
  const logDeadline = Date.now() + 30_000;
  while (!logs.includes(`alive ${id}`) && Date.now() < logDeadline) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    logs = (await sandbox.run(['logs', 'app2'])).stdout.toString();
  }
  assert.ok(logs.includes(`alive ${id}`), `logs of the restored run: ${JSON.stringify(logs.slice(-300))}`);

  // The startup-snapshot run can itself be snapshotted and cloned: the clone's app is the same
  // one (same id, still serving), reached through the clone's own published port.
  await sandbox.run(['exec', 'app2', '--', 'sh', '-c', 'echo app2 > /www/who']);
  const p3 = await freePort();
  const fork = await sandbox.run(['fork', 'app2', '-n', '1', '-p', `127.0.0.1:${p3}:8080`], { timeoutMs: 180_000 });
  assert.equal(fork.code, 0, fork.stderr.toString());
  let who: string | undefined;
  const whoDeadline = Date.now() + 30_000;
  while (who === undefined && Date.now() < whoDeadline) {
    who = await httpGet(p3, '/who');
    if (who === undefined) await new Promise((resolve) => setTimeout(resolve, 300));
  }
  assert.equal(who, 'app2\n');
  assert.equal(await httpGet(p3, '/id'), id);

  const rm = await sandbox.run(['rm', '-f', 'app1', 'app2', 'app2-1']);
  assert.equal(rm.code, 0, rm.stderr.toString());
  assert.deepEqual(sandbox.processes(), []);
});
