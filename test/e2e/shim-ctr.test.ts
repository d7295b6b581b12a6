/**
 * containerd-shim-shoal-v2 driven by containerd's own client, ctr, against a real containerd
 * (Debian's 1.6.20) that this test starts with its own root, state, sockets and config in a temp
 * dir (never the host's /run/containerd), the project's bin/ first on its PATH, and shoal's state
 * in a sandbox. Three VM boots: one `ctr run` (guest kernel, exit code, stdout/stderr apart,
 * stdin), one detached container (exec, ps, SIGTERM ignored then SIGKILL), one whose shim is
 * killed with -9 (containerd's clean-up through `delete` leaves no VM, process, mount or file).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { haveContainerd, mountsUnder, processesNaming, TestContainerd, vmIdsOf } from '../helpers/containerd';
import { buildBusyboxDockerArchive } from '../helpers/images';
import { ShoalSandbox, waitUntil } from '../helpers/shoal-cli';

const NS = 'shoaltest';
const IMAGE = 'localhost/shoal-shim-test:latest';
const RUNTIME = 'io.containerd.shoal.v2';

const sandbox = new ShoalSandbox('shim');
const containerd = new TestContainerd('shim', sandbox);
const dir = containerd.dir;
const sock = containerd.socket;
const shimSockets = containerd.shimSockets;

const ctr = (args: string[], options: { input?: string; timeoutMs?: number } = {}) => containerd.ctr(NS, args, options);
const bundleOf = (id: string): string => containerd.bundleOf(NS, id);
/** shoal's records of the sandbox (the shim's VMs are ordinary shoal VMs). */
const vmIds = (): string[] => vmIdsOf(sandbox);

describe('containerd-shim-shoal-v2 with ctr', { skip: haveContainerd ? false : 'containerd/ctr not installed' }, () => {
  before(async () => {
    await containerd.start();
    const archive = await buildBusyboxDockerArchive(path.join(dir, 'image.tar'), IMAGE);
    const imported = await ctr(['images', 'import', archive]);
    assert.equal(imported.code, 0, imported.stderr);
  });

  after(async () => {
    // Whatever happened: no task, no shim, no containerd, no VM, no mount, no file.
    for (const id of ['t-run', 't-detached', 't-kill9']) {
      await ctr(['task', 'kill', '-s', 'SIGKILL', id], { timeoutMs: 10_000 });
      await ctr(['task', 'delete', '-f', id], { timeoutMs: 20_000 });
      await ctr(['container', 'delete', id], { timeoutMs: 10_000 });
    }
    await containerd.stop();
    sandbox.cleanup();
    containerd.removeFiles();
  });

  test('ctr run: the guest kernel, exit code 7, stdout and stderr apart, stdin', async () => {
    const started = Date.now();
    const result = await ctr(['run', '--rm', '--fifo-dir', path.join(dir, 'fifo'), '--runtime', RUNTIME, IMAGE, 't-run',
      'sh', '-c', 'uname -r; read line; echo "stdin:$line"; echo to-stderr >&2; exit 7'], { input: 'hello from the host\n' });
    console.log(`ctr run (boot, run, delete): ${Date.now() - started} ms`);
    assert.equal(result.code, 7, result.stderr);
    const lines = result.stdout.trim().split('\n');
    const hostRelease = os.release();
    assert.match(lines[0]!, /^\d+\.\d+\.\d+/);
    assert.notEqual(lines[0], hostRelease, 'uname -r printed the host kernel: not in a VM');
    assert.ok(lines.includes('stdin:hello from the host'), result.stdout);
    assert.equal(result.stderr.trim(), 'to-stderr');
    assert.ok(!result.stdout.includes('to-stderr'));
    // --rm: the task, the VM and the shim are gone.
    await waitUntil('the VM to be removed', 20_000, () => vmIds().length === 0);
    assert.equal(fs.existsSync(bundleOf('t-run')), false);
  });

  test('a detached container: exec, ps, SIGTERM ignored, then SIGKILL; the shim\'s events reach containerd', async () => {
    // containerd's own event stream: ctr decodes each event's Any, so a wrong type URL or a
    // malformed event ends it with an error.
    const events = spawn('ctr', ['-a', sock, 'events'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let eventText = '';
    events.stdout.on('data', (d: Buffer) => { eventText += d.toString(); });
    events.stderr.on('data', (d: Buffer) => { eventText += d.toString(); });
    await new Promise((r) => setTimeout(r, 500));
    const run = await ctr(['run', '-d', '--null-io', '--runtime', RUNTIME, IMAGE, 't-detached', 'sh', '-c', 'trap "" TERM; while true; do sleep 1; done']);
    assert.equal(run.code, 0, run.stderr);
    const exec = await ctr(['task', 'exec', '--fifo-dir', path.join(dir, 'fifo'), '--exec-id', 'e1', 't-detached', 'sh', '-c', 'echo exec-out; echo exec-err >&2; exit 3']);
    assert.equal(exec.code, 3, exec.stderr);
    assert.equal(exec.stdout.trim(), 'exec-out');
    assert.equal(exec.stderr.trim(), 'exec-err');
    // config.json's rlimits and tmpfs mounts (ctr's default spec: RLIMIT_NOFILE 1024, a tmpfs /run).
    const limits = await ctr(['task', 'exec', '--exec-id', 'e2', 't-detached', 'sh', '-c', 'ulimit -n; grep -c "^tmpfs /run tmpfs" /proc/mounts']);
    assert.equal(limits.code, 0, limits.stderr);
    assert.deepEqual(limits.stdout.trim().split('\n'), ['1024', '1']);
    const ps = await ctr(['task', 'ps', 't-detached']);
    assert.equal(ps.code, 0, ps.stderr);
    assert.ok(ps.stdout.trim().split('\n').slice(1).some((l) => /^\s*\d+/.test(l)), ps.stdout);
    const term = await ctr(['task', 'kill', '-s', 'SIGTERM', 't-detached']);
    assert.equal(term.code, 0, term.stderr);
    await new Promise((r) => setTimeout(r, 2000));
    const ls = await ctr(['task', 'ls']);
    assert.match(ls.stdout, /t-detached\s+\d+\s+RUNNING/, 'a process that ignores SIGTERM keeps running');
    const kill = await ctr(['task', 'kill', '-s', 'SIGKILL', 't-detached']);
    assert.equal(kill.code, 0, kill.stderr);
    await waitUntil('the task to stop', 20_000, async () => /t-detached\s+\d+\s+STOPPED/.test((await ctr(['task', 'ls'])).stdout));
    const del = await ctr(['task', 'delete', 't-detached']);
    assert.equal(del.code, 0, del.stderr);
    assert.equal((await ctr(['container', 'delete', 't-detached'])).code, 0);
    await waitUntil('the VM to be removed', 20_000, () => vmIds().length === 0);
    const topics = ['/tasks/create', '/tasks/start', '/tasks/exec-added', '/tasks/exec-started', '/tasks/exit', '/tasks/delete'];
    try {
      await waitUntil('the task events', 10_000, () => topics.every((t) => eventText.includes(`${NS} ${t} `)));
    } finally {
      events.kill('SIGKILL');
    }
    assert.match(eventText, /\/tasks\/exit \{"container_id":"t-detached","id":"t-detached","pid":\d+,"exit_status":137/);
    assert.match(eventText, /\/tasks\/exec-started \{"container_id":"t-detached","exec_id":"e1"/);
  });

  test('kill -9 of the shim: containerd\'s clean-up leaves no VM, process, mount or file', async () => {
    const run = await ctr(['run', '-d', '--null-io', '--runtime', RUNTIME, IMAGE, 't-kill9', 'sleep', '1000']);
    assert.equal(run.code, 0, run.stderr);
    const bundle = bundleOf('t-kill9');
    const shimPid = Number(fs.readFileSync(path.join(bundle, 'shim.pid'), 'utf8'));
    const { vmId } = JSON.parse(fs.readFileSync(path.join(bundle, 'shoal-vm.json'), 'utf8')) as { vmId: string };
    assert.deepEqual(vmIds(), [vmId]);
    assert.ok(processesNaming(vmId).length > 0, 'the VM runs');
    process.kill(shimPid, 'SIGKILL');
    // containerd sees the connection drop and runs `containerd-shim-shoal-v2 delete`.
    // The delete's steps end at different moments: wait for all of them, then check each.
    await waitUntil('the clean-up after the dead shim', 30_000, () => vmIds().length === 0 && processesNaming(vmId).length === 0 && mountsUnder(bundle).length === 0 && fs.readdirSync(shimSockets).length === 0)
      .catch(() => undefined);
    assert.deepEqual(vmIds(), []);
    assert.deepEqual(processesNaming(vmId), []);
    assert.deepEqual(mountsUnder(bundle), []);
    assert.deepEqual(fs.readdirSync(shimSockets), []);
    await ctr(['task', 'delete', 't-kill9']);
    assert.equal((await ctr(['container', 'delete', 't-kill9'])).code, 0);
    assert.deepEqual(sandbox.leftovers(), []);
    assert.equal(fs.existsSync(`/dev/shm/shoal-${vmId}.ram`), false);
  });
});
