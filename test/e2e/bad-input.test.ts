/**
 * Bad input: each case is one line on stderr, a non-zero exit, and no change to the state
 * directory. None of these boots a VM.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { findFirecrackerBinary } from '../../src/vmm/firecracker/backend';
import { ShoalSandbox } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('bad');
after(() => sandbox.cleanup());

const cases: Array<{ what: string; args: string[]; error: RegExp }> = [
  { what: 'unknown image file', args: ['run', 'docker-archive:/nonexistent/image.tar'], error: /image file not found: \/nonexistent\/image\.tar/ },
  { what: 'name with a path separator', args: ['run', '--name', 'a/b', 'docker-archive:/dev/null'], error: /invalid --name: .*path separator/ },
  { what: 'empty name', args: ['run', '--name', '', 'docker-archive:/dev/null'], error: /invalid --name: name is empty/ },
  { what: 'name too long', args: ['run', '--name', 'x'.repeat(64), 'docker-archive:/dev/null'], error: /invalid --name: name is longer than 63/ },
  { what: 'memory below the minimum', args: ['run', '--memory', '64', 'busybox'], error: /--memory 64 is below the minimum of 256 MiB/ },
  { what: 'memory not a number', args: ['run', '--memory', 'lots', 'busybox'], error: /invalid --memory "lots"/ },
  { what: 'zero cpus', args: ['run', '--cpus', '0', 'busybox'], error: /--cpus 0 is out of range/ },
  { what: 'malformed image reference', args: ['run', 'Not An Image'], error: /invalid image reference/ },
  { what: 'exec on a missing VM', args: ['exec', 'ghost', '--', 'true'], error: /no such VM: ghost/ },
  { what: 'rm of a missing VM', args: ['rm', 'ghost'], error: /no such VM: ghost/ },
  { what: 'logs of a missing VM', args: ['logs', 'ghost'], error: /no such VM: ghost/ },
  { what: 'unknown --vmm', args: ['run', '--vmm', 'xen', 'busybox'], error: /invalid --vmm "xen"/ },
  { what: '--health-check not an http URL', args: ['run', '--health-check', 'ftp://localhost/', 'busybox'], error: /invalid --health-check "ftp:\/\/localhost\/": expected an http/ },
  { what: '--jailer with --vmm qemu', args: ['run', '--jailer', '--vmm', 'qemu', 'busybox'], error: /--jailer .*cannot be combined with --vmm qemu/ },
  { what: '--jailer-uid not a number', args: ['run', '--jailer', '--jailer-uid', 'root', 'busybox'], error: /invalid --jailer-uid "root"/ },
  { what: '--jailer-uid without --jailer', args: ['run', '--jailer-uid', '5', 'busybox'], error: /go with --jailer/ },
  { what: '--jailer-chroot relative', args: ['run', '--jailer', '--jailer-chroot', 'jails', 'busybox'], error: /invalid --jailer-chroot "jails"/ },
];
// Where Firecracker cannot run (no binary, or KVM failing the boot probe), --jailer says so
// instead of falling back to QEMU.
if (!findFirecrackerBinary().path) {
  cases.push({ what: '--jailer without a usable Firecracker', args: ['run', '--jailer', '--vmm', 'auto', 'busybox'], error: /cannot use Firecracker \(needed by --jailer\)/ });
}

for (const c of cases) {
  test(`bad input: ${c.what}`, async () => {
    const before = sandbox.leftovers();
    const result = await sandbox.run(c.args, { timeoutMs: 30_000 });
    assert.notEqual(result.code, 0);
    const stderr = result.stderr.toString();
    assert.match(stderr, c.error);
    assert.equal(stderr.trimEnd().split('\n').length, 1, `expected one line, got: ${stderr}`);
    assert.equal(result.stdout.length, 0);
    assert.deepEqual(sandbox.leftovers(), before);
    assert.deepEqual(sandbox.processes(), []);
  });
}
