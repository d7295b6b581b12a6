/**
 * Forks of forks (issue 13): a VM restored from the image cache is forked, a child is forked
 * again, a grandchild again (depth 3). At each level a child sees its parent's guest memory (a
 * file on the guest's /dev/shm tmpfs) and disk (a file on the scratch disk) as they were at the
 * fork; writes at any level reach neither the parent nor siblings; siblings draw different
 * random bytes. Then a `snapshot run` clone is snapshotted and cloned, and `snapshot rm` of a
 * parent with live clones is refused with their names, while its child snapshot never needs it.
 *
 * Lean: 256 MiB 1-vCPU guests, `exec --vm` (no podman exec), VMs removed once no check needs them.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { busyboxImageForFile } from '../helpers/images';
import { SHOAL_BIN, ShoalSandbox, type LsEntry } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('depth');
const busybox = busyboxImageForFile();
const seenIds = new Set<string>();

after(() => {
  sandbox.cleanup();
  for (const id of seenIds) fs.rmSync(`/dev/shm/shoal-${id}.ram`, { force: true });
});

/** A shell script in the guest OS (not the container): fast under TCG, and sees the guest's tmpfs and disk. */
async function vmSh(name: string, script: string): Promise<string> {
  const result = await sandbox.run(['exec', '--vm', name, '--', 'sh', '-c', script], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, `exec in ${name}: ${result.stderr.toString()}`);
  return result.stdout.toString();
}

/** What the VM holds in memory (guest tmpfs) and on disk (scratch ext4), written by mark(). */
function state(name: string): Promise<string> {
  return vmSh(name, 'cat /dev/shm/level /mnt/scratch/level');
}

async function mark(name: string, value: string): Promise<void> {
  await vmSh(name, `echo ${value} > /dev/shm/level; echo ${value} > /mnt/scratch/level`);
}

async function fork(source: string, prefix: string): Promise<[string, string]> {
  const result = await sandbox.run(['fork', source, '-n', '2', '--name-prefix', prefix, '--json'], { timeoutMs: 240_000 });
  assert.equal(result.code, 0, result.stderr.toString());
  const out = JSON.parse(result.stdout.toString()) as { pausedMs: number; children: Array<{ name: string; state: string }> };
  assert.deepEqual(out.children.map((c) => [c.name, c.state]), [[`${prefix}-1`, 'running'], [`${prefix}-2`, 'running']]);
  assert.ok(out.pausedMs > 0, `the source's pause is reported: ${result.stdout.toString()}`);
  for (const vm of await sandbox.json<LsEntry[]>(['ls', '--json'])) seenIds.add(vm.id);
  return [`${prefix}-1`, `${prefix}-2`];
}

/** Resolves once the child's stderr (the CLI's progress lines) matches. */
function waitForStderr(child: ChildProcess, pattern: RegExp, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new Error(`no ${pattern} on stderr within ${timeoutMs} ms: ${text}`)), timeoutMs);
    child.stderr!.on('data', (d: Buffer) => {
      text += d.toString();
      if (pattern.test(text)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

/** The two children differ in their kernel's random bytes (each reseeded from the host). */
async function assertRandomDiffers(a: string, b: string): Promise<void> {
  const read = 'head -c 16 /dev/urandom | od -An -tx1';
  const [ra, rb] = await Promise.all([vmSh(a, read), vmSh(b, read)]);
  assert.notEqual(ra, rb, `${a} and ${b} read the same random bytes`);
}

test('fork of a cache-restored VM, to depth 3: each level sees its parent as it was; writes stay apart', { timeout: 600_000 }, async () => {
  const args = ['--memory', '256', busybox.ref, '--', 'sleep', '3600'];
  const seed = await sandbox.run(['run', '-d', '--name', 'seed', ...args], { timeoutMs: 180_000 });
  assert.equal(seed.code, 0, seed.stderr.toString());
  assert.equal((await sandbox.run(['rm', '-f', 'seed'], { timeoutMs: 60_000 })).code, 0);
  const top = await sandbox.run(['run', '-d', '--name', 'top', ...args], { timeoutMs: 180_000 });
  assert.equal(top.code, 0, top.stderr.toString());
  assert.equal((await sandbox.vm('top'))?.imageCache, 'hit');
  await mark('top', 'L0');

  // Depth 1: children of the cache-restored VM.
  const [a1, a2] = await fork('top', 'a');
  assert.equal(await state(a1), 'L0\nL0\n');
  assert.equal(await state(a2), 'L0\nL0\n');
  await mark(a1, 'L1');
  await mark(a2, 'sibling');
  assert.equal(await state('top'), 'L0\nL0\n');
  assert.equal(await state(a1), 'L1\nL1\n');
  await assertRandomDiffers(a1, a2);
  await mark('top', 'top-later');
  assert.equal(await state(a2), 'sibling\nsibling\n');
  assert.equal((await sandbox.run(['rm', '-f', a2], { timeoutMs: 60_000 })).code, 0);

  // Depth 2: children of a fork child.
  const [b1, b2] = await fork(a1, 'b');
  assert.equal(await state(b1), 'L1\nL1\n');
  assert.equal(await state(b2), 'L1\nL1\n');
  await mark(b1, 'L2');
  assert.equal(await state(a1), 'L1\nL1\n');
  assert.equal(await state(b2), 'L1\nL1\n');
  await assertRandomDiffers(b1, b2);
  // The container the image cache started is still there, three restores later.
  assert.equal((await sandbox.run(['exec', b1, '--', 'sh', '-c', 'ps -o comm | grep -c sleep'], { timeoutMs: 60_000 })).stdout.toString(), '1\n');
  assert.equal((await sandbox.run(['rm', '-f', b2], { timeoutMs: 60_000 })).code, 0);

  // Depth 3: children of a grandchild.
  const [c1, c2] = await fork(b1, 'c');
  assert.equal(await state(c1), 'L2\nL2\n');
  await mark(c1, 'L3');
  assert.equal(await state(c2), 'L2\nL2\n');
  assert.equal(await state(b1), 'L2\nL2\n');
  assert.equal(await state(a1), 'L1\nL1\n');
  assert.equal(await state('top'), 'top-later\ntop-later\n');
  await assertRandomDiffers(c1, c2);
  assert.equal((await vmSh(c2, 'hostname')), `${c2}\n`);

  const rm = await sandbox.run(['rm', '-f', 'top', a1, b1, c1, c2], { timeoutMs: 120_000 });
  assert.equal(rm.code, 0, rm.stderr.toString());
});

test('a `snapshot run` clone is snapshotted and cloned; rm of a snapshot with live clones is refused', { timeout: 600_000 }, async () => {
  const run = await sandbox.run(['run', '-d', '--name', 'base', '--memory', '256', '--no-snapshot', busybox.ref, '--', 'sleep', '3600'], { timeoutMs: 180_000 });
  assert.equal(run.code, 0, run.stderr.toString());
  await mark('base', 'B0');
  assert.equal((await sandbox.run(['snapshot', 'create', 'base', '--tag', 'p'], { timeoutMs: 120_000 })).code, 0);
  const clone = await sandbox.run(['snapshot', 'run', '--snapshot', 'p', '--name', 'k'], { timeoutMs: 120_000 });
  assert.equal(clone.code, 0, clone.stderr.toString());
  await mark('k', 'K1');
  const create = await sandbox.run(['snapshot', 'create', 'k', '--tag', 'q', '--json'], { timeoutMs: 120_000 });
  assert.equal(create.code, 0, create.stderr.toString());
  const manifest = JSON.parse(create.stdout.toString()) as { parent?: { tag: string }; timings: { pausedMs: number; totalMs: number } };
  assert.equal(manifest.parent?.tag, 'p');
  assert.ok(manifest.timings.pausedMs > 0 && manifest.timings.pausedMs < manifest.timings.totalMs, JSON.stringify(manifest.timings));
  // The source goes on with its state.
  await mark('k', 'K2');

  const lineage = await sandbox.json<Array<{ tag: string; parent: string | null; children: string[]; liveClones: string[] }>>(['snapshot', 'ls', '--json']);
  assert.deepEqual(lineage.map((s) => [s.tag, s.parent, s.children, s.liveClones]), [['p', null, ['q'], ['k']], ['q', 'p', [], []]]);

  // p has a live clone: refused, nothing changed. --force would remove it; here k goes first.
  const refused = await sandbox.run(['snapshot', 'rm', 'q', 'p']);
  assert.equal(refused.code, 125);
  assert.equal(refused.stderr.toString().split('\n').filter(Boolean).length, 1);
  assert.match(refused.stderr.toString(), /^shoal: snapshot p has live clones \(k\)/);
  assert.deepEqual((await sandbox.json<Array<{ tag: string }>>(['snapshot', 'ls', '--json'])).map((s) => s.tag), ['p', 'q']);
  assert.equal((await sandbox.run(['rm', '-f', 'k', 'base'], { timeoutMs: 60_000 })).code, 0);
  assert.equal((await sandbox.run(['snapshot', 'rm', 'p'])).code, 0);

  // q does not need p: a clone of it, after p is gone, goes on from k's state at the snapshot.
  const again = await sandbox.run(['snapshot', 'run', '--snapshot', 'q', '--name', 'k2'], { timeoutMs: 120_000 });
  assert.equal(again.code, 0, again.stderr.toString());
  for (const vm of await sandbox.json<LsEntry[]>(['ls', '--json'])) seenIds.add(vm.id);
  assert.equal(await state('k2'), 'K1\nK1\n');

  // Faults during a snapshot of a clone (issue 13): the source keeps running with its state, and
  // nothing that looks like a snapshot is left. Disk full: the snapshot store on a 32 MiB tmpfs.
  const snapshotsDir = path.join(sandbox.stateDir, 'snapshots');
  const hidden = path.join(sandbox.stateDir, 'snapshots-hidden');
  fs.renameSync(snapshotsDir, hidden);
  fs.mkdirSync(snapshotsDir, { mode: 0o700 });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=32m,mode=0700', 'tmpfs', snapshotsDir]);
  try {
    const full = await sandbox.run(['snapshot', 'create', 'k2', '--tag', 'full'], { timeoutMs: 120_000 });
    assert.equal(full.code, 125, full.stderr.toString());
    assert.equal(full.stderr.toString().split('\n').filter(Boolean).length, 1, full.stderr.toString());
    assert.match(full.stderr.toString(), /^shoal: snapshot of k2 failed: .*(No space left|ENOSPC)/);
    assert.deepEqual(fs.readdirSync(snapshotsDir), [], 'a failed snapshot leaves nothing in the store');
  } finally {
    execFileSync('umount', [snapshotsDir]);
    fs.rmdirSync(snapshotsDir);
    fs.renameSync(hidden, snapshotsDir);
  }
  assert.equal(await state('k2'), 'K1\nK1\n');

  // kill -9 of the CLI while the clone is being copied: the supervisor finishes or abandons the
  // snapshot on its own; the source runs on, and no complete-looking snapshot appears.
  const cli = spawn(SHOAL_BIN, ['snapshot', 'create', 'k2', '--tag', 'killed'], { env: sandbox.env({ SHOAL_PROGRESS: '1' }), stdio: ['ignore', 'ignore', 'pipe'] });
  await waitForStderr(cli, /copying|migrat|quiesc/i, 60_000);
  cli.kill('SIGKILL');
  await new Promise((resolve) => cli.once('close', resolve));
  assert.equal(await state('k2'), 'K1\nK1\n');
  assert.deepEqual((await sandbox.json<Array<{ tag: string }>>(['snapshot', 'ls', '--json'])).map((x) => x.tag), ['q']);
  assert.equal((await sandbox.run(['rm', '-f', 'k2'], { timeoutMs: 60_000 })).code, 0);
  assert.equal((await sandbox.run(['snapshot', 'rm', 'q'])).code, 0);
  assert.deepEqual(sandbox.processes(), []);
  assert.deepEqual(sandbox.leftovers(), []);
  for (const id of seenIds) assert.ok(!fs.existsSync(`/dev/shm/shoal-${id}.ram`), `/dev/shm/shoal-${id}.ram leaked`);
});
