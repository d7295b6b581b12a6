/**
 * QEMU's command line for a VmSpec: the microvm machine, the accelerator, the console, the QMP
 * and agent sockets, drives in order, guest RAM in a file (shared for a source, private for a
 * clone), the network device per mode, and the deferred incoming migration of a restore.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { buildQemuArgv, RESTORE_TCG_TB_SIZE_MIB, qemuPaths, tcgTbSizeMiB, type QemuLaunch } from '../../src/vmm/qemu/argv';
import type { VmSpec } from '../../src/vmm/backend';

const spec: VmSpec = {
  id: 'a1b2c3d4e5f6',
  runDir: '/run/vm',
  kernel: '/cache/vmlinuz',
  initrd: '/cache/initrd.gz',
  cmdline: 'console=ttyS0 shoal.transport=serial',
  cpus: 2,
  memoryMiB: 512,
  drives: [
    { id: 'root', path: '/cache/rootfs.ext4', readOnly: true },
    { id: 'scratch', path: '/run/vm/scratch.img', readOnly: false },
  ],
  accel: 'tcg',
  consoleLog: '/run/vm/console.log',
};

function launch(extra: Partial<QemuLaunch> = {}): QemuLaunch {
  return { spec, drives: spec.drives, consoleLog: spec.consoleLog, paths: qemuPaths(spec.runDir), ...extra };
}

/** The value following each occurrence of flag. */
function values(argv: string[], flag: string): string[] {
  return argv.flatMap((a, i) => (a === flag ? [argv[i + 1]!] : []));
}

test('the machine, accelerator, shape, kernel and sockets', () => {
  const argv = buildQemuArgv(launch());
  assert.deepEqual(values(argv, '-machine'), ['microvm,x-option-roms=off,isa-serial=on,rtc=on']);
  // The translation cache: QEMU's own for a boot, shoal's size for a restore; SHOAL_TCG_TB_MIB
  // sets one for both (0: QEMU's own).
  const saved = process.env.SHOAL_TCG_TB_MIB;
  delete process.env.SHOAL_TCG_TB_MIB;
  try {
    assert.deepEqual(values(buildQemuArgv(launch()), '-accel'), ['tcg,thread=single']);
    assert.deepEqual(values(buildQemuArgv({ ...launch(), incoming: true }), '-accel'), [`tcg,thread=single,tb-size=${RESTORE_TCG_TB_SIZE_MIB}`]);
    process.env.SHOAL_TCG_TB_MIB = '0';
    assert.deepEqual(values(buildQemuArgv({ ...launch(), incoming: true }), '-accel'), ['tcg,thread=single']);
    process.env.SHOAL_TCG_TB_MIB = '64';
    assert.deepEqual(values(buildQemuArgv(launch()), '-accel'), ['tcg,thread=single,tb-size=64']);
    assert.deepEqual(values(buildQemuArgv({ ...launch(), incoming: true }), '-accel'), ['tcg,thread=single,tb-size=64']);
    for (const bad of ['32M', '-1', '5000', '1e3']) assert.throws(() => tcgTbSizeMiB(false, { SHOAL_TCG_TB_MIB: bad }), /SHOAL_TCG_TB_MIB must be a whole number/);
  } finally {
    if (saved === undefined) delete process.env.SHOAL_TCG_TB_MIB;
    else process.env.SHOAL_TCG_TB_MIB = saved;
  }
  assert.deepEqual(values(argv, '-cpu'), ['max']);
  assert.deepEqual(values(argv, '-smp'), ['2']);
  assert.deepEqual(values(argv, '-m'), ['512M']);
  assert.deepEqual(values(argv, '-kernel'), ['/cache/vmlinuz']);
  assert.deepEqual(values(argv, '-initrd'), ['/cache/initrd.gz']);
  assert.deepEqual(values(argv, '-append'), ['console=ttyS0 shoal.transport=serial']);
  assert.deepEqual(values(argv, '-qmp'), ['unix:/run/vm/qmp.sock,server=on,wait=off']);
  assert.ok(values(argv, '-chardev').includes('socket,id=agent,path=/run/vm/agent.sock,server=on,wait=off'));
  assert.ok(values(argv, '-chardev').includes('file,id=console,path=/run/vm/console.log,append=on'));
  assert.ok(values(argv, '-device').includes('virtserialport,chardev=agent,name=shoal.agent'));
  // No network, no memory file, no restore unless asked.
  assert.deepEqual(values(argv, '-netdev'), []);
  assert.deepEqual(values(argv, '-object'), []);
  assert.deepEqual(values(argv, '-incoming'), []);
  assert.ok(argv.includes('-nodefaults') && argv.includes('-no-reboot'));

  const kvm = buildQemuArgv(launch({ spec: { ...spec, accel: 'kvm' } }));
  assert.deepEqual(values(kvm, '-accel'), ['kvm']);
  assert.deepEqual(values(kvm, '-cpu'), ['host']);
  // What the KVM probe needed on a nested host (MSR 0x10a refused): the VM launches with it.
  const nested = buildQemuArgv(launch({ spec: { ...spec, accel: 'kvm', kvmCpuFlags: ['-arch-capabilities'] } }));
  assert.deepEqual(values(nested, '-cpu'), ['host,-arch-capabilities']);
  assert.deepEqual(values(buildQemuArgv(launch({ spec: { ...spec, kvmCpuFlags: ['-arch-capabilities'] } })), '-cpu'), ['max'], 'TCG ignores them');
});

test('drives keep their order (vda, vdb) and read-only flags', () => {
  const argv = buildQemuArgv(launch());
  assert.deepEqual(values(argv, '-drive'), [
    'id=root,file=/cache/rootfs.ext4,format=raw,if=none,readonly=on',
    'id=scratch,file=/run/vm/scratch.img,format=raw,if=none,readonly=off',
  ]);
  assert.deepEqual(values(argv, '-device').filter((d) => d.startsWith('virtio-blk')), [
    'virtio-blk-device,drive=root,serial=root',
    'virtio-blk-device,drive=scratch,serial=scratch',
  ]);
});

test('guest RAM in a file: shared for a source, private for a clone restored with -incoming defer', () => {
  const source = buildQemuArgv(launch({ memory: { path: '/dev/shm/shoal-a.ram', share: true } }));
  assert.deepEqual(values(source, '-object'), ['memory-backend-file,id=ram,size=512M,mem-path=/dev/shm/shoal-a.ram,share=on']);
  assert.ok(values(source, '-machine').includes('memory-backend=ram'));
  const clone = buildQemuArgv(launch({ memory: { path: '/snap/memory.raw', share: false }, incoming: true }));
  assert.deepEqual(values(clone, '-object'), ['memory-backend-file,id=ram,size=512M,mem-path=/snap/memory.raw,share=off']);
  assert.deepEqual(values(clone, '-incoming'), ['defer']);
});

test('network: user-mode with forwards, or a TAP by name', () => {
  const slirp = buildQemuArgv(launch({
    net: {
      mac: '02:fc:00:00:00:01',
      userMode: { forwards: [{ proto: 'tcp', hostAddress: '127.0.0.1', hostPort: 8080, guestPort: 80 }, { proto: 'udp', hostAddress: '0.0.0.0', hostPort: 5353, guestPort: 53 }] },
    },
  }));
  assert.deepEqual(values(slirp, '-netdev'), ['user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:0.0.0.0:5353-:53']);
  assert.ok(values(slirp, '-device').includes('virtio-net-device,netdev=net0,mac=02:fc:00:00:00:01'));
  const tap = buildQemuArgv(launch({ net: { mac: '02:fc:00:00:00:02', tap: 'shoal-a1b2c3d4' } }));
  assert.deepEqual(values(tap, '-netdev'), ['tap,id=net0,ifname=shoal-a1b2c3d4,script=no,downscript=no']);
  // A spec with neither gets no device (rather than a half-configured one).
  assert.deepEqual(values(buildQemuArgv(launch({ net: { mac: '02:fc:00:00:00:03' } })), '-netdev'), []);
});
