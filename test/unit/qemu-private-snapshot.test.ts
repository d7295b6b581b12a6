/**
 * The helper QEMU of a snapshot of a restored VM (src/vmm/qemu/private-snapshot.ts), without
 * QEMU: its command line keeps the source's machine and device layout (so the migration stream
 * loads), and changes exactly what must not be shared with the running source.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { buildQemuArgv, qemuPaths, type QemuLaunch } from '../../src/vmm/qemu/argv';
import { helperLaunch, helperNet } from '../../src/vmm/qemu/private-snapshot';

function sourceLaunch(dir: string): QemuLaunch {
  const scratch = path.join(dir, 'scratch.img');
  fs.writeFileSync(scratch, '');
  fs.truncateSync(scratch, 16 * 1024 * 1024);
  const runDir = path.join(dir, 'vm');
  fs.mkdirSync(runDir);
  return {
    spec: { id: 'abc', runDir, kernel: '/k', initrd: '/i', cmdline: 'console=ttyS0', cpus: 1, memoryMiB: 256, drives: [], accel: 'tcg', consoleLog: path.join(runDir, 'console.log') },
    drives: [{ id: 'root', path: '/rootfs.ext4', readOnly: true }, { id: 'scratch', path: scratch, readOnly: false }],
    net: { mac: '02:fc:00:00:00:07', userMode: { forwards: [{ proto: 'tcp', hostAddress: '127.0.0.1', hostPort: 8080, guestPort: 80 }] } },
    consoleLog: path.join(runDir, 'console.log'),
    paths: qemuPaths(runDir),
    memory: { path: '/snap/memory.raw', share: false },
  };
}

test('helper QEMU: same machine and devices; own sockets, shared RAM file, stand-in disks, no host forwards', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qps-unit-'));
  try {
    const source = sourceLaunch(dir);
    const helperDir = path.join(source.spec.runDir, 'helper-000000');
    fs.mkdirSync(helperDir);
    const launch = await helperLaunch(source, helperDir, '/dev/shm/shoal-helper.ram');
    const argv = buildQemuArgv(launch);
    const sourceArgv = buildQemuArgv(source);
    const value = (list: string[], flag: string): string[] => list.flatMap((v, i) => (list[i - 1] === flag ? [v] : []));
    // The guest-visible shape is the source's.
    for (const flag of ['-machine', '-accel', '-cpu', '-smp', '-m', '-kernel', '-append', '-initrd']) assert.deepEqual(value(argv, flag), value(sourceArgv, flag), flag);
    assert.deepEqual(value(argv, '-device').map((d) => d.replace(/,drive=\w+/, '')), value(sourceArgv, '-device').map((d) => d.replace(/,drive=\w+/, '')));
    // Its own sockets and console, in its own directory.
    assert.ok(argv.some((a) => a.includes(`unix:${path.join(helperDir, 'qmp.sock')}`)));
    assert.ok(argv.some((a) => a.includes(`path=${path.join(helperDir, 'agent.sock')}`)));
    assert.ok(!argv.some((a) => a.includes(path.join(source.spec.runDir, 'qmp.sock'))));
    // Its RAM is a fresh shared file (what it saves with x-ignore-shared), and it waits for the stream.
    assert.ok(argv.includes('memory-backend-file,id=ram,size=256M,mem-path=/dev/shm/shoal-helper.ram,share=on'));
    assert.deepEqual(value(argv, '-incoming'), ['defer']);
    // The read-only root is shared; the writable disk is a sparse stand-in of the same size (the
    // source holds its disk's write lock, and a migration carries no disk contents).
    const drives = value(argv, '-drive');
    assert.ok(drives[0]!.includes('file=/rootfs.ext4'));
    const standIn = path.join(helperDir, 'scratch.img');
    assert.ok(drives[1]!.startsWith(`id=scratch,file=${standIn},`));
    assert.equal(fs.statSync(standIn).size, 16 * 1024 * 1024);
    assert.equal(fs.statSync(standIn).blocks, 0);
    // User-mode networking without the source's forwards (their host ports are the source's).
    assert.deepEqual(value(argv, '-netdev'), ['user,id=net0']);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('helper QEMU network: the same backend type, never the source\'s TAP or forwards', () => {
  assert.equal(helperNet(undefined), undefined);
  assert.deepEqual(helperNet({ mac: 'm', userMode: { forwards: [{ proto: 'udp', hostAddress: '0.0.0.0', hostPort: 53, guestPort: 53 }] } }), { mac: 'm', userMode: { forwards: [] } });
  const tap = helperNet({ mac: 'm', tap: 'shoal-abcdef012345', namespacePid: 42 });
  assert.match(tap?.tap ?? '', /^shoalh[0-9a-f]{8}$/);
  assert.ok((tap?.tap ?? '').length <= 15, 'a Linux interface name has at most 15 characters');
  assert.notEqual(helperNet({ mac: 'm', tap: 'tap0' })?.tap, helperNet({ mac: 'm', tap: 'tap0' })?.tap);
});
