/**
 * The guest half of the Firecracker path, in a real guest kernel, on every CI run: no
 * Firecracker can run on this project's machines, so the agent's AF_VSOCK code never ran (and
 * once crashed every Firecracker boot at its first accept while every unit test passed).
 *
 * SHOAL_QEMU_AGENT_LINK=vsock-relay boots QEMU guests whose agent serves vsock exactly as under
 * Firecracker (`shoal.transport=vsock`: listen on port 1024, accept, the native bridge, a fresh
 * session per connection), reached by a relay in the guest over the kernel's vsock loopback
 * (src/agent/vsock-relay.ts), which opens a new connection for every new host as Firecracker's
 * host side does. One VM and one clone: run, exec with stdout/stderr/exit code, stdin through
 * the bridge's flow control, a terminal, a snapshot (the source's session goes on), a clone's
 * first connection with Hello.restored (its recovery takes the clone's name), and signals.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, describe, test } from 'node:test';
import { busyboxImageForFile } from '../helpers/images';
import { ShoalSandbox, waitUntil } from '../helpers/shoal-cli';

process.env.SHOAL_QEMU_AGENT_LINK = 'vsock-relay';

const sandbox = new ShoalSandbox('gvsock');
const busybox = busyboxImageForFile();

after(() => sandbox.cleanup());

async function ok(args: string[], options: { input?: Buffer; timeoutMs?: number } = {}): Promise<{ stdout: string; stderr: string }> {
  const r = await sandbox.run(args, { timeoutMs: options.timeoutMs ?? 60_000, ...(options.input ? { input: options.input } : {}) });
  assert.equal(r.code, 0, `shoal ${args.join(' ')}: ${r.stderr.toString()}`);
  return { stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

describe('the agent over AF_VSOCK in a real guest (vsock loopback relay)', { timeout: 600_000 }, () => {
  test('run, exec, stdin, a terminal, a snapshot, a clone\'s restored session, signals', async () => {
    // The main container: says when it starts, and ends on SIGTERM with a code of its own.
    const main = "trap 'echo got-term; exit 143' TERM; echo main-started; while :; do sleep 1; done";
    await ok(['run', '-d', '--name', 'gv', busybox.ref, '--', 'sh', '-c', main], { timeoutMs: 240_000 });

    // The agent really is on vsock: the kernel line says so and the agent logged its listener.
    const cmdline = (await ok(['exec', '--vm', 'gv', '--', 'cat', '/proc/cmdline'])).stdout;
    assert.match(cmdline, /\bshoal\.transport=vsock\b/);
    assert.match(cmdline, /\bshoal\.vsock_relay=serial\b/);
    const console = (await ok(['logs', '--console', 'gv'])).stdout;
    assert.match(console, /shoal-agent: agent ready on vsock port 1024/);
    assert.match(console, /shoal-agent: vsock relay: virtio-serial <-> vsock 1:1024/);
    assert.doesNotMatch(console, /shoal-agent: fatal/);

    // exec: stdout and stderr apart, the exit code.
    const r = await sandbox.run(['exec', 'gv', '--', 'sh', '-c', 'printf out; printf err >&2; exit 7'], { timeoutMs: 60_000 });
    assert.equal(r.code, 7, r.stderr.toString());
    assert.equal(r.stdout.toString(), 'out');
    assert.equal(r.stderr.toString(), 'err');

    // stdin: 4 MiB through the bridge both ways, under credit flow control.
    const input = crypto.randomBytes(4 << 20);
    const echoed = await sandbox.run(['exec', '-i', 'gv', '--', 'cat'], { input, timeoutMs: 120_000 });
    assert.equal(echoed.code, 0, echoed.stderr.toString());
    assert.ok(echoed.stdout.equals(input), `cat echoed ${echoed.stdout.length} of ${input.length} bytes, or other bytes`);

    // A terminal (-t without one on stdin: the container still gets a pty, and says its size).
    // (stty needs a terminal on stdin; the line ends show the pty's output processing.)
    const tty = await sandbox.run(['exec', '-t', 'gv', '--', 'stty', 'size'], { timeoutMs: 60_000 });
    assert.equal(tty.code, 0, tty.stderr.toString());
    assert.match(tty.stdout.toString(), /^\d+ \d+\r\n$/);

    // A snapshot: the source's session goes on (a resume on the same connection), and so do execs.
    await ok(['snapshot', 'create', 'gv', '--tag', 'gvt'], { timeoutMs: 180_000 });
    assert.equal((await ok(['exec', 'gv', '--', 'echo', 'after-snapshot'])).stdout, 'after-snapshot\n');

    // A clone: the relay opens a new vsock connection for its new host, the agent accepts it and
    // runs a clone's recovery because the HELLO says restored: the guest takes the clone's name.
    await ok(['snapshot', 'run', '--snapshot', 'gvt', '--name', 'gvc'], { timeoutMs: 180_000 });
    assert.equal((await ok(['exec', '--vm', 'gvc', '--', 'hostname'])).stdout, 'gvc\n');
    assert.equal((await ok(['exec', 'gvc', '--', 'echo', 'in-clone'])).stdout, 'in-clone\n');
    assert.equal((await ok(['exec', '--vm', 'gv', '--', 'hostname'])).stdout, 'gv\n', 'the source keeps its name');

    // Signals reach the main container through the link: stop sends SIGTERM, the trap answers.
    for (const name of ['gvc', 'gv']) {
      await ok(['stop', '-t', '20', name], { timeoutMs: 90_000 });
      await waitUntil(`${name} stopped`, 60_000, async () => (await sandbox.vm(name))?.state === 'stopped');
      const vm = await sandbox.vm(name);
      assert.equal(vm?.exitCode, 143, `${name}'s container ended by its TERM trap: ${JSON.stringify(vm)}; ${(await sandbox.run(['logs', '--console', name])).stdout.toString().split('\n').filter((l) => /shoal|error/i.test(l)).slice(-8).join(' | ')}`);
      const logs = (await ok(['logs', name])).stdout;
      assert.match(logs, /got-term/);
    }
    assert.match((await ok(['logs', 'gv'])).stdout, /^main-started\n/);
    await ok(['rm', 'gv', 'gvc']);
    await ok(['snapshot', 'rm', 'gvt']);
    assert.deepEqual(sandbox.processes(), []);
  });
});
