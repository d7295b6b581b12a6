/**
 * The main job end to end, under whatever accelerator `shoal setup` chose (TCG here): real QEMU,
 * real podman in a real guest. Each VM boot costs seconds under TCG, so cases share VMs where
 * they can, and every command has a hard timeout.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildBusyboxDockerArchive, buildBusyboxOciArchive } from '../helpers/images';
import { ShoalSandbox, waitUntil, type LsEntry } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('run');
const imagesDir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-images-'));
let dockerArchive = '';
let ociArchive = '';

before(async () => {
  dockerArchive = `docker-archive:${await buildBusyboxDockerArchive(path.join(imagesDir, 'busybox.tar'))}`;
  ociArchive = `oci-archive:${await buildBusyboxOciArchive(path.join(imagesDir, 'busybox-oci.tar'))}`;
});

after(() => {
  sandbox.cleanup();
  fs.rmSync(imagesDir, { recursive: true, force: true });
});

describe('shoal run', () => {
  test('forwards the exit code, keeps stdout and stderr apart byte for byte, passes env, shows --memory/--cpus', async () => {
    const script = [
      "printf 'out\\000\\001\\377end'",
      "printf 'err\\000line\\n' >&2",
      'echo',
      'echo "FOO=$FOO"',
      'echo "CPUS=$(nproc)"',
      "grep MemTotal /proc/meminfo",
      'exit 7',
    ].join('; ');
    const result = await sandbox.run(['run', '--name', 'shape', '--memory', '700', '--cpus', '2', '-e', 'FOO=bar baz', dockerArchive, '--', 'sh', '-c', script]);
    assert.equal(result.code, 7, result.stderr.toString());
    assert.deepEqual(result.stderr, Buffer.from('err\x00line\n', 'latin1'));
    const stdout = result.stdout;
    assert.deepEqual(stdout.subarray(0, 10), Buffer.from('out\x00\x01\xffend\n', 'latin1'));
    const text = stdout.subarray(10).toString();
    assert.match(text, /^FOO=bar baz$/m);
    assert.match(text, /^CPUS=2$/m);
    const memKiB = Number(/MemTotal:\s+(\d+)/.exec(text)?.[1]);
    // 700 MiB of RAM, less what the kernel reserves for itself.
    assert.ok(memKiB > 600 * 1024 && memKiB <= 700 * 1024, `MemTotal ${memKiB} KiB`);
    const [vm] = await sandbox.json<LsEntry[]>(['ls', '--json']);
    assert.equal(vm?.name, 'shape');
    assert.equal(vm?.state, 'stopped');
    assert.equal(vm?.exitCode, 7);
    assert.deepEqual(sandbox.processes(), []);
    const rm = await sandbox.run(['rm', 'shape']);
    assert.equal(rm.code, 0, rm.stderr.toString());
  });

  test('exit code 0 from an oci-archive image, and --rm leaves nothing behind', async () => {
    const result = await sandbox.run(['run', '--rm', '--name', 'oci', ociArchive, '--', 'sh', '-c', 'echo from-oci']);
    assert.equal(result.code, 0, result.stderr.toString());
    assert.equal(result.stdout.toString(), 'from-oci\n');
    assert.deepEqual(await sandbox.json<LsEntry[]>(['ls', '--json']), []);
    assert.deepEqual(sandbox.leftovers(), []);
    assert.deepEqual(sandbox.processes(), []);
  });

  test('a container killed by SIGKILL exits 137', async () => {
    // The container's PID 1 cannot be SIGKILLed from inside its own PID namespace, so the kill
    // comes from the guest OS, as `podman kill` on a host would.
    const attached = sandbox.run(['run', '--rm', '--name', 'victim', dockerArchive, '--', 'sleep', '600']);
    await waitUntil('victim to run', 120_000, async () => (await sandbox.json<LsEntry[]>(['ls', '--json'])).some((v) => v.name === 'victim' && v.state === 'running'));
    const kill = await sandbox.run(['exec', '--vm', 'victim', '--', 'podman', 'kill', '--signal', 'KILL', 'main']);
    assert.equal(kill.code, 0, kill.stderr.toString());
    const result = await attached;
    assert.equal(result.code, 137, result.stderr.toString());
  });

  test('stdin is piped with -i, byte for byte', async () => {
    const input = crypto.randomBytes(768 * 1024);
    const result = await sandbox.run(['run', '--rm', '-i', dockerArchive, '--', 'cat'], { input });
    assert.equal(result.code, 0, result.stderr.toString());
    assert.equal(result.stdout.length, input.length);
    assert.ok(result.stdout.equals(input), 'stdout differs from stdin');
  });
});

describe('detached VMs', () => {
  test('two at once, exec into them, ls --json, a killed supervisor is dead, rm -f leaves nothing', async () => {
    for (const name of ['alpha', 'beta']) {
      const result = await sandbox.run(['run', '-d', '--name', name, dockerArchive, '--', 'sleep', '600']);
      assert.equal(result.code, 0, result.stderr.toString());
      assert.equal(result.stdout.toString(), `${name}\n`);
    }
    let vms = await sandbox.json<LsEntry[]>(['ls', '--json']);
    assert.deepEqual(vms.map((v) => [v.name, v.state, v.backend]).sort(), [['alpha', 'running', 'qemu'], ['beta', 'running', 'qemu']]);
    assert.notEqual(vms[0]!.pid, vms[1]!.pid);

    // exec: in the container, in the guest OS, with stdin, exit codes forwarded.
    const inContainer = await sandbox.run(['exec', 'alpha', '--', 'sh', '-c', 'ps -o comm | grep -c sleep; echo oops >&2; exit 3']);
    assert.equal(inContainer.code, 3);
    assert.equal(inContainer.stdout.toString().trim(), '1');
    assert.equal(inContainer.stderr.toString(), 'oops\n');
    const inGuest = await sandbox.run(['exec', '--vm', 'beta', '--', 'hostname']);
    assert.equal(inGuest.code, 0, inGuest.stderr.toString());
    assert.equal(inGuest.stdout.toString(), 'beta\n');
    const piped = await sandbox.run(['exec', '-i', 'alpha', '--', 'sha256sum'], { input: 'hello\n' });
    assert.equal(piped.stdout.toString().split(' ')[0], crypto.createHash('sha256').update('hello\n').digest('hex'));

    // A name in use is refused, and nothing changes.
    const before = sandbox.leftovers().sort();
    const duplicate = await sandbox.run(['run', '-d', '--name', 'alpha', dockerArchive, '--', 'true']);
    assert.notEqual(duplicate.code, 0);
    assert.match(duplicate.stderr.toString(), /^shoal: the name "alpha" is already in use.*\n$/);
    assert.deepEqual(sandbox.leftovers().sort(), before);

    // kill -9 of beta's supervisor: its VMM goes with it, and ls says dead.
    const beta = vms.find((v) => v.name === 'beta')!;
    process.kill(beta.pid!, 'SIGKILL');
    await waitUntil('beta VMM to exit', 10_000, () => {
      try {
        process.kill(beta.vmmPid!, 0);
        return false;
      } catch {
        return true;
      }
    });
    vms = await sandbox.json<LsEntry[]>(['ls', '--json']);
    assert.equal(vms.find((v) => v.name === 'beta')?.state, 'dead');
    assert.equal(vms.find((v) => v.name === 'beta')?.pid, null);
    const execDead = await sandbox.run(['exec', 'beta', '--', 'true']);
    assert.notEqual(execDead.code, 0);
    assert.match(execDead.stderr.toString(), /beta is dead/);

    // rm -f of a running VM, and rm of a dead one: no process, socket, mount or file remains.
    const rm = await sandbox.run(['rm', '-f', 'alpha', 'beta'], { timeoutMs: 60_000 });
    assert.equal(rm.code, 0, rm.stderr.toString());
    assert.deepEqual(sandbox.processes(), []);
    assert.deepEqual(sandbox.leftovers(), []);
    const mounts = fs.readFileSync('/proc/self/mounts', 'utf8');
    assert.ok(!mounts.includes(sandbox.stateDir), 'a mount of the sandbox remains');
    assert.deepEqual(await sandbox.json<LsEntry[]>(['ls', '--json']), []);
  });

  test('stop powers a running VM off and keeps its record', async () => {
    const run = await sandbox.run(['run', '-d', '--name', 'stoppable', dockerArchive, '--', 'sleep', '600']);
    assert.equal(run.code, 0, run.stderr.toString());
    const stop = await sandbox.run(['stop', 'stoppable'], { timeoutMs: 60_000 });
    assert.equal(stop.code, 0, stop.stderr.toString());
    const [vm] = await sandbox.json<LsEntry[]>(['ls', '--json']);
    assert.equal(vm?.state, 'stopped');
    assert.deepEqual(sandbox.processes(), []);
    const logs = await sandbox.run(['logs', '--console', 'stoppable']);
    assert.match(logs.stdout.toString(), /shoal-agent: [\s\S]*reboot: Power down/);
    assert.equal((await sandbox.run(['rm', 'stoppable'])).code, 0);
  });
});
