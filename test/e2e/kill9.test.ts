/**
 * kill -9 at chosen moments of run, snapshot create, snapshot run and fork, on QEMU (TCG here,
 * 1 vCPU): of the `shoal` CLI process, or of a VM's supervisor. Each moment is found by watching
 * what the step makes observable (the supervisor or QEMU process appearing, the snapshot's temp
 * directory and its state file), not by sleeping. After each kill:
 *   - `shoal ls` tells the truth: a VM whose supervisor is gone is never `creating`, `starting`
 *     or `running`; a VM whose supervisor lives carries on (a killed CLI is only a lost watcher);
 *   - `shoal rm -f` leaves nothing: no process naming the VM, no /dev/shm RAM file, no vms/<id>,
 *     no name claim, no socket, no snapshot or image-cache temp directory, no TAP, no mount;
 *   - the name can be used again (the next start).
 * One VM (booted once, with its CLI killed) is the source of every snapshot and fork case.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { CLAIMS_DIR, tapName } from '../../src/network/bridge';
import { MEMORY_FILE_DIR } from '../../src/state/vm-files';
import { busyboxImageForFile } from '../helpers/images';
import { ShoalSandbox, waitUntil, type CliResult, type LsEntry } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('kill9');
const image = busyboxImageForFile();
/** Every VM id the suite saw, for the final count (and the cleanup of a failed run). */
const seenIds = new Set<string>();
after(() => {
  sandbox.cleanup();
  for (const id of seenIds) fs.rmSync(path.join(MEMORY_FILE_DIR, `shoal-${id}.ram`), { force: true });
});

const DEAD = ['dead', 'failed', 'stopped'];
const snapshotsDir = path.join(sandbox.stateDir, 'snapshots');

/** The id a name is claimed for, read from the claim file (undefined while unclaimed). */
function claimedId(name: string): string | undefined {
  try {
    const id = fs.readFileSync(path.join(sandbox.stateDir, 'names', name), 'utf8').split('\n')[0]!.trim();
    if (id) seenIds.add(id);
    return id || undefined;
  } catch {
    return undefined;
  }
}

function cmdlineOf(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return '';
  }
}

/** Live (not zombie) processes whose command line names this VM id: its supervisor, QEMU, helpers. */
function processesOf(id: string): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    if (!cmdlineOf(Number(entry)).includes(id)) continue;
    try {
      if (/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${entry}/stat`, 'utf8'))) continue;
    } catch {
      continue;
    }
    pids.push(Number(entry));
  }
  return pids;
}

function supervisorOf(id: string): number | undefined {
  return processesOf(id).find((pid) => /supervisor\/main\.js\0/.test(cmdlineOf(pid)));
}

function qemuOf(id: string): number | undefined {
  return processesOf(id).find((pid) => cmdlineOf(pid).startsWith('qemu-system') || cmdlineOf(pid).includes('/qemu-system'));
}

/** Live (not zombie) pid, with its parent's pid. */
function parentOf(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] === 'Z' ? undefined : Number(fields[1]);
  } catch {
    return undefined;
  }
}

/**
 * Every process below pid (QEMU, the network helpers, the copies and migration pipes they run),
 * whether or not its command line names the VM: taken before a kill, none may outlive `rm -f`.
 */
function descendantsOf(pid: number): number[] {
  const parents = new Map<number, number>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const parent = parentOf(Number(entry));
    if (parent !== undefined) parents.set(Number(entry), parent);
  }
  const found: number[] = [];
  let frontier = [pid];
  while (frontier.length > 0) {
    const next = [...parents].filter(([, parent]) => frontier.includes(parent)).map(([child]) => child);
    found.push(...next);
    frontier = next;
  }
  return found;
}

/** Kills a supervisor; returns what ran below it, to be counted after `rm -f`. */
function kill9Supervisor(id: string): number[] {
  const supervisor = supervisorOf(id);
  assert.ok(supervisor !== undefined, `no supervisor for ${id}`);
  const family = descendantsOf(supervisor);
  process.kill(supervisor, 'SIGKILL');
  return family;
}

function stillAlive(pids: number[]): string[] {
  return pids.filter((pid) => parentOf(pid) !== undefined).map((pid) => `process ${pid} (below the killed supervisor): ${cmdlineOf(pid).replace(/\0/g, ' ').slice(0, 120)}`);
}

function kill9(pid: number): void {
  process.kill(pid, 'SIGKILL');
}

async function ls(name: string): Promise<LsEntry | undefined> {
  const vm = await sandbox.vm(name);
  if (vm) seenIds.add(vm.id);
  return vm;
}

/**
 * Polls until check() returns a value. Every 50 ms by default (a scan of /proc is not free on a
 * 2-core TCG host that is booting a guest); 5 ms to catch a process that just started.
 */
async function watchFor<T>(what: string, timeoutMs: number, check: () => T | undefined, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A snapshot temp directory (`.tmp-<tag>-*` or `.fork-*`) whose state file QEMU has begun to write. */
function migratingDir(prefix: string): string | undefined {
  let entries: string[] = [];
  try {
    entries = fs.readdirSync(snapshotsDir);
  } catch {
    return undefined;
  }
  const dir = entries.find((e) => e.startsWith(prefix) && fs.existsSync(path.join(snapshotsDir, e, 'state.bin')));
  return dir === undefined ? undefined : path.join(snapshotsDir, dir);
}

/** An image-cache save's temp directory whose state file QEMU has begun to write. */
function cacheSaveDir(): string | undefined {
  const root = path.join(sandbox.stateDir, 'image-cache');
  let entries: string[] = [];
  try {
    entries = fs.readdirSync(root);
  } catch {
    return undefined;
  }
  return entries.find((e) => e.startsWith('.tmp-') && fs.existsSync(path.join(root, e, 'state.bin')));
}

/** Temp directories of snapshots and image-cache saves. */
/** Whether a temp directory's owner (the pid in its name) is gone: a zombie counts as gone. */
function ownerDead(dir: string): boolean {
  const pid = /-(\d+)-[A-Za-z0-9]{6}$/.exec(dir)?.[1];
  if (pid === undefined) return true;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

function tempDirs(): string[] {
  const found: string[] = [];
  for (const sub of ['snapshots', 'image-cache']) {
    try {
      for (const e of fs.readdirSync(path.join(sandbox.stateDir, sub))) if (e.startsWith('.')) found.push(`${sub}/${e}`);
    } catch {
      // not made yet
    }
  }
  return found;
}

/** A dead VM as `ls` must show it: not active, no pids. */
function assertShownDead(vm: LsEntry | undefined, what: string): void {
  assert.ok(vm, `${what}: the VM is listed`);
  assert.ok(DEAD.includes(vm.state), `${what}: ls shows ${vm.state} for a VM whose supervisor is gone`);
  assert.equal(vm.pid, null, `${what}: ls shows a supervisor pid`);
  assert.equal(vm.vmmPid, null, `${what}: ls shows a VMM pid`);
}

/** What is left of these VMs on the host: empty after `rm -f`. */
function leftoversOf(ids: string[], names: string[], family: number[] = []): string[] {
  const left: string[] = stillAlive(family);
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8');
  const links = fs.readdirSync('/sys/class/net');
  for (const id of ids) {
    for (const pid of processesOf(id)) left.push(`process ${pid}: ${cmdlineOf(pid).replace(/\0/g, ' ').slice(0, 120)}`);
    if (fs.existsSync(path.join(MEMORY_FILE_DIR, `shoal-${id}.ram`))) left.push(`${MEMORY_FILE_DIR}/shoal-${id}.ram`);
    if (fs.existsSync(path.join(sandbox.stateDir, 'vms', id))) left.push(`vms/${id}`);
    if (links.includes(tapName(id))) left.push(`TAP ${tapName(id)}`);
    if (mounts.includes(id)) left.push(`a mount naming ${id}`);
  }
  for (const name of names) if (fs.existsSync(path.join(sandbox.stateDir, 'names', name))) left.push(`names/${name}`);
  // Sockets of these VMs, or of none (a live VM's own sockets under vms/<its id> are not leftovers).
  for (const file of sandbox.leftovers()) if ((file.endsWith('.sock') && !file.startsWith('vms/')) || ids.some((id) => file.includes(id))) left.push(file);
  if (mounts.includes(sandbox.stateDir)) left.push('a mount under the state directory');
  return left;
}

async function rmF(...names: string[]): Promise<void> {
  const rm = await sandbox.run(['rm', '-f', ...names], { timeoutMs: 60_000 });
  assert.equal(rm.code, 0, rm.stderr.toString());
}

/** A failed command says so in one `shoal:` line. */
function assertFailedCleanly(result: CliResult, what: string): void {
  assert.notEqual(result.code, 0, `${what}: the command succeeded`);
  assert.equal(result.signal, null, `${what}: the command hung until the test's timeout`);
  assert.match(result.stderr.toString(), /^shoal: .+$/m, `${what}: ${result.stderr.toString()}`);
}

async function sh(name: string, script: string): Promise<string> {
  const result = await sandbox.run(['exec', name, '--', 'sh', '-c', script], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, `exec in ${name}: ${result.stderr.toString()}`);
  return result.stdout.toString();
}

/**
 * A case's body; if it fails, its VMs are removed so that the next case (which reuses the names)
 * is judged on its own.
 */
function removingOnFailure(names: string[], body: () => Promise<void>): () => Promise<void> {
  return async () => {
    try {
      await body();
    } catch (err) {
      await sandbox.run(['rm', '-f', ...names.filter((n) => claimedId(n) !== undefined)], { timeoutMs: 60_000 });
      throw err;
    }
  };
}

/** 1 vCPU (snapshots under TCG need it), no image cache: the source must be a booted VM. */
const RUN = ['run', '-d', '--cpus', '1', '--memory', '512', '--no-snapshot'];

describe('kill -9', { timeout: 600_000 }, () => {
  test('run: the supervisor killed as it starts, before its first record write', removingOnFailure(['k1'], async () => {
    const cli = sandbox.start([...RUN, '--name', 'k1', image.ref, '--', 'sleep', '3600'], { timeoutMs: 120_000 });
    const id = await watchFor('the claim', 30_000, () => claimedId('k1'), 5);
    const supervisor = await watchFor('the supervisor process', 30_000, () => supervisorOf(id), 5);
    kill9(supervisor);
    await waitUntil('the supervisor to go', 5000, () => !processesOf(id).includes(supervisor));
    // The CLI that created the VM still waits for it: ls must not call it `creating` all the same.
    assertShownDead(await ls('k1'), 'supervisor killed at start');
    const result = await cli.result;
    assertFailedCleanly(result, 'run whose supervisor was killed');
    const gone = await ls('k1');
    assertShownDead(gone, 'after the CLI gave up');
    process.stdout.write(`# run, supervisor killed at start: ls shows ${gone!.state} (${gone!.error}); the CLI said ${result.stderr.toString().trim()}\n`);
    await rmF('k1');
    assert.deepEqual(leftoversOf([id], ['k1']), []);
  }));

  test('run: the supervisor killed while QEMU boots', removingOnFailure(['k1'], async () => {
    const cli = sandbox.start([...RUN, '--name', 'k1', image.ref, '--', 'sleep', '3600'], { timeoutMs: 120_000 });
    const id = await watchFor('the claim', 30_000, () => claimedId('k1'));
    await watchFor('QEMU', 60_000, () => qemuOf(id));
    assert.equal((await ls('k1'))?.state, 'starting');
    const family = kill9Supervisor(id);
    assertShownDead(await ls('k1'), 'supervisor killed during boot');
    const result = await cli.result;
    assertFailedCleanly(result, 'run whose supervisor was killed');
    // QEMU dies with its supervisor (parent-death signal).
    await waitUntil('QEMU to die with its supervisor', 10_000, () => qemuOf(id) === undefined);
    await rmF('k1');
    assert.deepEqual(leftoversOf([id], ['k1'], family), []);
  }));

  for (const network of ['bridged', 'slirp4netns']) {
    test(`run --network ${network}: the supervisor killed while QEMU boots; no helper, TAP or address claim is left`, removingOnFailure(['k1'], async () => {
      const cli = sandbox.start([...RUN, '--network', network, '--name', 'k1', image.ref, '--', 'sleep', '3600'], { timeoutMs: 120_000 });
      const id = await watchFor('the claim', 30_000, () => claimedId('k1'));
      await watchFor('QEMU', 60_000, () => qemuOf(id));
      // The helpers (slirp4netns, the namespace's holder) run below the supervisor: wait for
      // slirp4netns too (it may start after QEMU), so the kill catches them all running.
      // Its pid is kept: the leftover count below must find it gone, even if a second listing of
      // the supervisor's descendants at the kill missed it (CI saw that twice).
      const slirp = network === 'slirp4netns'
        ? [await watchFor('slirp4netns below the supervisor', 30_000, () => descendantsOf(supervisorOf(id)!).find((pid) => cmdlineOf(pid).startsWith('slirp4netns')))]
        : [];
      const family = [...kill9Supervisor(id), ...slirp];
      assertShownDead(await ls('k1'), `${network}: supervisor killed during boot`);
      assertFailedCleanly(await cli.result, 'run whose supervisor was killed');
      await rmF('k1');
      assert.deepEqual(leftoversOf([id], ['k1'], family), []);
      // A bridged VM's address claim (a file naming its id) is released.
      const claims = fs.existsSync(CLAIMS_DIR) ? fs.readdirSync(CLAIMS_DIR).filter((f) => fs.readFileSync(path.join(CLAIMS_DIR, f), 'utf8').includes(id)) : [];
      assert.deepEqual(claims, []);
    }));
  }

  test('run: the supervisor killed while it saves the image cache', removingOnFailure(['k1'], async () => {
    // The image cache on (the default): the first run of the image boots, loads it, and saves it.
    const cli = sandbox.start(['run', '-d', '--cpus', '1', '--memory', '512', '--name', 'k1', image.ref, '--', 'sleep', '3600'], { timeoutMs: 240_000 });
    const id = await watchFor('the claim', 30_000, () => claimedId('k1'));
    await watchFor('the image-cache save', 180_000, () => cacheSaveDir());
    const family = kill9Supervisor(id);
    assertShownDead(await ls('k1'), 'supervisor killed during the image-cache save');
    assertFailedCleanly(await cli.result, 'run whose supervisor was killed');
    await waitUntil('QEMU to die with its supervisor', 10_000, () => qemuOf(id) === undefined);
    await rmF('k1');
    assert.deepEqual(leftoversOf([id], ['k1'], family), []);
    // No entry was published; the save's temp directory (a RAM and disk copy) is swept by the
    // next start (the next case checks).
    assert.deepEqual(fs.readdirSync(path.join(sandbox.stateDir, 'image-cache')).filter((e) => !e.startsWith('.')), []);
  }));

  test('run: the CLI killed while QEMU boots; the VM boots on and ls says so (the next start of the name)', async () => {
    const cli = sandbox.start([...RUN, '--name', 'k1', image.ref, '--', 'sleep', '3600'], { timeoutMs: 240_000 });
    const id = await watchFor('the claim', 30_000, () => claimedId('k1'));
    await watchFor('QEMU', 60_000, () => qemuOf(id));
    kill9(cli.pid);
    assert.equal((await cli.result).signal, 'SIGKILL');
    // Its supervisor owns the VM: the VM is starting, then running, and it answers.
    const vm = await ls('k1');
    assert.ok(vm && ['starting', 'running'].includes(vm.state), JSON.stringify(vm));
    assert.equal(vm.pid, supervisorOf(id));
    await waitUntil('k1 to run', 180_000, async () => (await ls('k1'))?.state === 'running');
    assert.equal(await sh('k1', 'echo up; echo before > /root/mark; sync'), 'up\n');
    // This start swept what the killed image-cache save left (a directory whose owner is alive
    // is not a leftover: a save in progress, or a pid reused since).
    assert.deepEqual(tempDirs().filter(ownerDead), []);
  });

  test('snapshot create: the CLI killed mid-migration; the source runs on, no snapshot is left', async () => {
    const cli = sandbox.start(['snapshot', 'create', 'k1', '--tag', 'cli-killed'], { timeoutMs: 120_000 });
    await watchFor('the migration', 60_000, () => migratingDir('.tmp-cli-killed-'));
    kill9(cli.pid);
    await cli.result;
    assert.equal((await ls('k1'))?.state, 'running');
    assert.equal(await sh('k1', 'cat /root/mark'), 'before\n');
    assert.deepEqual(await sandbox.json(['snapshot', 'ls', '--json']), []);
    // `snapshot ls` sweeps the dead creator's temp directory (the supervisor may still have been
    // writing into it: its snapshot then fails, and the source resumes all the same).
    await waitUntil('the sweep', 30_000, async () => {
      await sandbox.json(['snapshot', 'ls', '--json']);
      return tempDirs().filter((dir) => dir.startsWith('snapshots/')).length === 0;
    });
    assert.equal(await sh('k1', 'echo still'), 'still\n');
  });

  test('snapshot run: the clone\'s supervisor killed during the restore', removingOnFailure(['c1'], async () => {
    const create = await sandbox.run(['snapshot', 'create', 'k1', '--tag', 't1'], { timeoutMs: 120_000 });
    assert.equal(create.code, 0, create.stderr.toString());
    const cli = sandbox.start(['snapshot', 'run', '--snapshot', 't1', '--name', 'c1'], { timeoutMs: 120_000 });
    const id = await watchFor('the claim', 30_000, () => claimedId('c1'));
    await watchFor('QEMU', 60_000, () => qemuOf(id));
    const family = kill9Supervisor(id);
    assertShownDead(await ls('c1'), 'clone supervisor killed during restore');
    assertFailedCleanly(await cli.result, 'snapshot run whose supervisor was killed');
    await waitUntil('QEMU to die with its supervisor', 10_000, () => qemuOf(id) === undefined);
    await rmF('c1');
    assert.deepEqual(leftoversOf([id], ['c1'], family), []);
  }));

  test('snapshot run: the CLI killed during the restore; the clone runs on (the next start of the name)', removingOnFailure(['c1'], async () => {
    const cli = sandbox.start(['snapshot', 'run', '--snapshot', 't1', '--name', 'c1'], { timeoutMs: 120_000 });
    const id = await watchFor('the claim', 30_000, () => claimedId('c1'));
    await watchFor('QEMU', 60_000, () => qemuOf(id));
    kill9(cli.pid);
    await cli.result;
    const vm = await ls('c1');
    assert.ok(vm && ['creating', 'starting', 'running'].includes(vm.state), JSON.stringify(vm));
    await waitUntil('c1 to run', 60_000, async () => (await ls('c1'))?.state === 'running');
    assert.equal(await sh('c1', 'cat /root/mark'), 'before\n');
    await rmF('c1');
    assert.deepEqual(leftoversOf([id], ['c1']), []);
  }));

  test('fork: the CLI killed mid-snapshot; the source runs on, no child, no .fork-* left', async () => {
    const cli = sandbox.start(['fork', 'k1', '-n', '1'], { timeoutMs: 120_000 });
    await watchFor('the migration', 60_000, () => migratingDir('.fork-'));
    kill9(cli.pid);
    await cli.result;
    assert.equal(claimedId('k1-1'), undefined);
    assert.equal((await ls('k1'))?.state, 'running');
    await waitUntil('the sweep', 30_000, async () => {
      await sandbox.json(['snapshot', 'ls', '--json']);
      return tempDirs().filter((dir) => dir.startsWith('snapshots/')).length === 0;
    });
    assert.equal(await sh('k1', 'echo still'), 'still\n');
  });

  test('fork: the CLI killed while the children restore; ls is truthful, rm -f leaves nothing', removingOnFailure(['k1-1', 'k1-2'], async () => {
    const cli = sandbox.start(['fork', 'k1', '-n', '2'], { timeoutMs: 180_000 });
    const ids = await watchFor('both children', 120_000, () => {
      const a = claimedId('k1-1');
      const b = claimedId('k1-2');
      return a && b && qemuOf(a) !== undefined ? [a, b] : undefined;
    });
    kill9(cli.pid);
    await cli.result;
    assert.equal((await ls('k1'))?.state, 'running');
    // Each child carries on or fails (its snapshot directory may be swept from under it), and
    // ls says which: a child shown active has its supervisor.
    await waitUntil('the children to settle', 90_000, async () => {
      const children = await Promise.all(['k1-1', 'k1-2'].map((n) => ls(n)));
      return children.every((c) => c !== undefined && ['running', ...DEAD].includes(c.state));
    });
    for (const [i, name] of ['k1-1', 'k1-2'].entries()) {
      const vm = await ls(name);
      process.stdout.write(`# fork child ${name} after its CLI was killed: ${vm!.state}${vm!.error ? ` (${vm!.error})` : ''}\n`);
      if (vm!.state === 'running') assert.equal(vm!.pid, supervisorOf(ids[i]!), `${name}: ls shows running`);
      else assertShownDead(vm, name);
    }
    await rmF('k1-1', 'k1-2');
    await sandbox.json(['snapshot', 'ls', '--json']);
    assert.deepEqual(leftoversOf(ids, ['k1-1', 'k1-2']), []);
    assert.deepEqual(tempDirs(), []);
    assert.equal(await sh('k1', 'echo still'), 'still\n');
  }));

  test('fork: a child\'s supervisor killed during its restore; fork fails and removes its children and snapshot', removingOnFailure(['k1-1', 'k1-2'], async () => {
    const cli = sandbox.start(['fork', 'k1', '-n', '2'], { timeoutMs: 180_000 });
    const id = await watchFor('the first child\'s QEMU', 120_000, () => {
      const child = claimedId('k1-1');
      return child && qemuOf(child) !== undefined ? child : undefined;
    });
    const other = claimedId('k1-2');
    const family = kill9Supervisor(id);
    assertFailedCleanly(await cli.result, 'fork whose child was killed');
    assert.equal(await ls('k1-1'), undefined);
    assert.equal(await ls('k1-2'), undefined);
    assert.deepEqual(leftoversOf(other ? [id, other] : [id], ['k1-1', 'k1-2'], family), []);
    assert.deepEqual(tempDirs(), []);
    assert.equal((await ls('k1'))?.state, 'running');
    assert.equal(await sh('k1', 'echo still'), 'still\n');
  }));

  test('snapshot create: the source\'s supervisor killed mid-migration; the source is shown dead', async () => {
    const id = claimedId('k1')!;
    const cli = sandbox.start(['snapshot', 'create', 'k1', '--tag', 'sup-killed'], { timeoutMs: 120_000 });
    await watchFor('the migration', 60_000, () => migratingDir('.tmp-sup-killed-'));
    const family = kill9Supervisor(id);
    assertShownDead(await ls('k1'), 'source supervisor killed mid-snapshot');
    assertFailedCleanly(await cli.result, 'snapshot create whose source supervisor was killed');
    await waitUntil('QEMU to die with its supervisor', 10_000, () => qemuOf(id) === undefined);
    assert.deepEqual((await sandbox.json<Array<{ tag: string }>>(['snapshot', 'ls', '--json'])).map((s) => s.tag), ['t1']);
    await rmF('k1');
    assert.deepEqual(leftoversOf([id], ['k1'], family), []);
    assert.deepEqual(tempDirs(), []);
  });

  test('after all: nothing of any VM is left', async () => {
    const rm = await sandbox.run(['snapshot', 'rm', 't1']);
    assert.equal(rm.code, 0, rm.stderr.toString());
    assert.deepEqual(await sandbox.json(['ls', '--json']), []);
    assert.deepEqual(leftoversOf([...seenIds], []), []);
    assert.deepEqual(sandbox.leftovers(), []);
    assert.deepEqual(sandbox.processes(), []);
    assert.deepEqual(tempDirs(), []);
  });
});

/** `.shoal-cp-*` staging directories in a host directory. */
function hostStaging(dir: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.startsWith('.shoal-cp-'));
}

/** Bytes below a directory (files only). */
function bytesBelow(dir: string): number {
  let sum = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    try {
      if (e.isDirectory()) sum += bytesBelow(p);
      else if (e.isFile()) sum += fs.statSync(p).size;
    } catch {
      // removed meanwhile
    }
  }
  return sum;
}

/** Host processes of a `shoal cp` (the CLI, or the `tar -c` it spawned) naming `marker`. */
function cpProcesses(marker: string): number[] {
  return fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e) && Number(e) !== process.pid).map(Number).filter((pid) => {
    const cmd = cmdlineOf(pid);
    return cmd.includes(marker) && (cmd.includes('\0cp\0') || cmd.startsWith('tar\0'));
  });
}

describe('kill -9 of shoal cp', { timeout: 600_000 }, () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-kill9-cp-'));
  after(() => fs.rmSync(work, { recursive: true, force: true }));

  const guest = async (script: string): Promise<string> => {
    const r = await sandbox.run(['exec', '--vm', 'kcp', '--', 'sh', '-c', script], { timeoutMs: 60_000 });
    assert.equal(r.code, 0, r.stderr.toString());
    return r.stdout.toString();
  };
  /** The guest's cp staging directories and cp processes (the into-container script runs as `shoal-cp`). */
  const guestLeftovers = async (): Promise<string> =>
    (await guest('ls -a /mnt/scratch | grep shoal-cp; ps -eo args | grep -e shoal-cp -e "podman cp" | grep -v grep; true')).trim();

  test('mid-transfer, out of and into the container: the next cp sweeps what the killed one left; no process is left', async () => {
    const run = await sandbox.run([...RUN, '--name', 'kcp', image.ref, '--', 'sleep', '3600'], { timeoutMs: 240_000 });
    assert.equal(run.code, 0, run.stderr.toString());
    seenIds.add((await sandbox.vm('kcp'))!.id);
    const made = await sandbox.run(['exec', 'kcp', '--', 'sh', '-c', 'dd if=/dev/zero of=/big bs=1M count=192 2>/dev/null && echo hi > /small'], { timeoutMs: 120_000 });
    assert.equal(made.code, 0, made.stderr.toString());

    // Out of the container: killed once its staging directory holds data.
    const out = path.join(work, 'out');
    fs.mkdirSync(out);
    const copyOut = sandbox.start(['cp', 'kcp:/big', path.join(out, 'big')], { timeoutMs: 240_000 });
    await waitUntil('cp out to be mid-transfer', 120_000, () => hostStaging(out).some((s) => bytesBelow(path.join(out, s)) > 1024 * 1024));
    process.kill(copyOut.pid, 'SIGKILL');
    assert.equal((await copyOut.result).signal, 'SIGKILL');
    const left = hostStaging(out);
    assert.equal(left.length, 1, 'the killed cp left its staging directory (so the sweep has work)');
    const next = await sandbox.run(['cp', 'kcp:/small', path.join(out, 'small')], { timeoutMs: 120_000 });
    assert.equal(next.code, 0, next.stderr.toString());
    assert.deepEqual(hostStaging(out), [], 'the next cp swept it');
    assert.deepEqual(fs.readdirSync(out), ['small']);
    await waitUntil('the guest side of the killed cp to end', 60_000, async () => (await guestLeftovers()) === '');

    // Into the container: killed once the guest's staging directory holds data.
    const src = path.join(work, 'in');
    fs.mkdirSync(src);
    const big = path.join(src, 'big');
    fs.writeFileSync(big, '');
    fs.truncateSync(big, 192 * 1024 * 1024); // read in full by tar -c (no --sparse)
    fs.writeFileSync(path.join(src, 'small'), 'small\n');
    const copyIn = sandbox.start(['cp', big, 'kcp:/tmp/'], { timeoutMs: 240_000 });
    await waitUntil('cp in to be mid-transfer', 120_000, async () => {
      const du = await guest('du -sk /mnt/scratch/.shoal-cp.* 2>/dev/null | cut -f1; true');
      return du.split('\n').some((kb) => Number(kb) > 1024);
    });
    process.kill(copyIn.pid, 'SIGKILL');
    assert.equal((await copyIn.result).signal, 'SIGKILL');
    await waitUntil('the killed cp\'s host tar to end', 30_000, () => cpProcesses(src).length === 0);
    const guestLeft = await guestLeftovers();
    const nextIn = await sandbox.run(['cp', path.join(src, 'small'), 'kcp:/tmp/'], { timeoutMs: 120_000 });
    assert.equal(nextIn.code, 0, nextIn.stderr.toString());
    assert.equal(await guest('ls -a /mnt/scratch | grep shoal-cp; true'), '', 'the next cp swept the guest staging directory');
    await waitUntil('no cp process in the guest', 60_000, async () => (await guestLeftovers()) === '');
    assert.deepEqual(cpProcesses(src), []);
    assert.deepEqual(cpProcesses(out), []);
    console.log(`# kill -9 of cp: host staging left ${left.join(', ')}; guest after the kill: ${JSON.stringify(guestLeft)}`);
    await rmF('kcp');
    assert.deepEqual(sandbox.processes(), []);
  });
});
