/**
 * Guest assets without a VM: module load order from modules.dep, the newc
 * writer (checked with cpio(1)), the LZ4 legacy decoder and bzImage payload
 * location, apt output parsing, payload layout, command line, asset hashes
 * and missing-tool errors.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { BASE_CMDLINE, guestCmdline, hostTscKhz } from '../../src/assets/cmdline';
import { initramfsModuleOrder, payloadFiles, INITRAMFS_MODULES, OPTIONAL_INITRAMFS_MODULES } from '../../src/assets/initramfs';
import { kernelHash, parseMetaDepends, parsePolicyCandidate, type KernelAsset } from '../../src/assets/kernel';
import { moduleName, parseModulesDep, resolveLoadOrder } from '../../src/assets/modules';
import { buildNewc } from '../../src/assets/newc';
import { imageSizeFor, rootfsHash, rootfsRecipe } from '../../src/assets/rootfs';
import { HOST_TOOLS, missingTools, requireTools } from '../../src/assets/tools';
import { probeKvm, type SerialRun } from '../../src/assets/probe';
import { bzImagePayload, isElf, lz4LegacyDecode } from '../../src/assets/vmlinux';
import { ShoalError } from '../../src/util/errors';

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-assets-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

// A trimmed copy of the real Debian 6.1 cloud kernel's modules.dep.
const MODULES_DEP = `kernel/fs/fuse/fuse.ko:
kernel/fs/overlayfs/overlay.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`;

describe('kernel modules: load order from modules.dep', () => {
  const dep = parseModulesDep(MODULES_DEP);

  it('names modules like modprobe does', () => {
    assert.equal(moduleName('kernel/drivers/char/hw_random/virtio-rng.ko'), 'virtio_rng');
    assert.equal(moduleName('a/b/overlay.ko.xz'), 'overlay');
    assert.equal(moduleName('virtio_blk'), 'virtio_blk');
    assert.ok(dep.has('virtio_rng'));
  });

  it('puts every dependency before its user, each module once', () => {
    const order = resolveLoadOrder(dep, [...INITRAMFS_MODULES]).map(moduleName);
    assert.deepEqual(order, [
      'virtio_ring',
      'virtio',
      'virtio_mmio',
      'virtio_blk',
      'virtio_console',
      'vsock',
      'vmw_vsock_virtio_transport_common',
      'vmw_vsock_virtio_transport',
      'overlay',
      'virtio_rng',
    ]);
    // Where the kernel has no virtio_rng module (built in, or absent), it is skipped, not an error.
    const withoutRng = parseModulesDep(MODULES_DEP.split('\n').filter((l) => !l.includes('virtio-rng')).join('\n'));
    assert.ok(!resolveLoadOrder(withoutRng, [...INITRAMFS_MODULES], [...OPTIONAL_INITRAMFS_MODULES]).some((p) => p.includes('rng')));
    // Every module's deps come earlier, whatever the request order.
    const shuffled = resolveLoadOrder(dep, ['vmw_vsock_virtio_transport', 'virtio_blk', 'virtio_ring']);
    const pos = new Map(shuffled.map((p, i) => [p, i]));
    for (const p of shuffled) {
      for (const d of dep.get(moduleName(p))!.deps) assert.ok(pos.get(d)! < pos.get(p)!, `${d} before ${p}`);
    }
    assert.equal(new Set(shuffled).size, shuffled.length);
  });

  it('follows modprobe order (last dependency first) for deps without their own entry', () => {
    const d = parseModulesDep('m.ko: b.ko a.ko\n');
    assert.deepEqual(resolveLoadOrder(d, ['m']), ['a.ko', 'b.ko', 'm.ko']);
  });

  it('rejects unknown modules unless optional (built in), and cycles', () => {
    assert.throws(() => resolveLoadOrder(dep, ['nosuch']), /nosuch not found/);
    assert.deepEqual(resolveLoadOrder(dep, ['ext4', 'overlay'], ['ext4']), ['kernel/fs/overlayfs/overlay.ko']);
    const cyc = parseModulesDep('x.ko: y.ko\ny.ko: x.ko\n');
    assert.throws(() => resolveLoadOrder(cyc, ['x']), /cycle/);
  });

  it('initramfsModuleOrder reads modules.dep and skips built-ins', () => {
    const md = path.join(dir, 'mods');
    fs.mkdirSync(md);
    // overlay built in: drop it from modules.dep and list it in modules.builtin.
    fs.writeFileSync(path.join(md, 'modules.dep'), MODULES_DEP.replace('kernel/fs/overlayfs/overlay.ko:\n', ''));
    fs.writeFileSync(path.join(md, 'modules.builtin'), 'kernel/fs/overlayfs/overlay.ko\nkernel/fs/ext4/ext4.ko\n');
    const order = initramfsModuleOrder(md).map(moduleName);
    assert.equal(order.includes('overlay'), false);
    assert.equal(order[0], 'virtio_ring');
    assert.equal(order.length, 9);
    assert.equal(order.at(-1), 'virtio_rng', 'virtio-rng for Firecracker\'s PUT /entropy');
  });
});

describe('newc archive', () => {
  it('is read back by cpio(1) with parents first, modes, symlinks and contents', (t) => {
    if (spawnSync('cpio', ['--version']).status !== 0) return t.skip('cpio not installed');
    const archive = buildNewc([
      { type: 'file', path: '/init', data: Buffer.from('#!/bin/sh\necho hi\n'), mode: 0o755 },
      { type: 'file', path: 'shoal/agent/agent/main.js', data: Buffer.from('x'.repeat(1001)) },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
      { type: 'char', path: 'dev/console', major: 5, minor: 1 },
      { type: 'dir', path: 'tmp', mode: 0o1777 },
    ]);
    assert.equal(archive.length % 512, 0);
    const list = spawnSync('cpio', ['-t', '--quiet'], { input: archive });
    assert.equal(list.status, 0, list.stderr.toString());
    const names = list.stdout.toString().trim().split('\n');
    assert.deepEqual(names, ['bin', 'bin/sh', 'dev', 'dev/console', 'init', 'shoal', 'shoal/agent', 'shoal/agent/agent', 'shoal/agent/agent/main.js', 'tmp']);
    const verbose = spawnSync('cpio', ['-tv', '--quiet'], { input: archive }).stdout.toString();
    assert.match(verbose, /^crw------- .* dev\/console/m);
    assert.match(verbose, /^drwxrwxrwt .* tmp/m);
    assert.match(verbose, /^-rwxr-xr-x .* init/m);

    const out = path.join(dir, 'x');
    fs.mkdirSync(out);
    const withoutDev = buildNewc([
      { type: 'file', path: 'shoal/agent/agent/main.js', data: Buffer.from('x'.repeat(1001)) },
      { type: 'symlink', path: 'bin/sh', target: 'busybox' },
    ]);
    const ex = spawnSync('cpio', ['-id', '--quiet'], { input: withoutDev, cwd: out });
    assert.equal(ex.status, 0, ex.stderr.toString());
    assert.equal(fs.readFileSync(path.join(out, 'shoal/agent/agent/main.js'), 'utf8'), 'x'.repeat(1001));
    assert.equal(fs.readlinkSync(path.join(out, 'bin/sh')), 'busybox');
  });

  it('is deterministic', () => {
    const e = [{ type: 'file' as const, path: 'a', data: Buffer.from('1') }];
    assert.deepEqual(buildNewc(e), buildNewc(e));
  });
});

describe('vmlinux extraction', () => {
  it('decodes the LZ4 legacy frame the kernel uses (trailing size ignored)', (t) => {
    const input = Buffer.concat([Buffer.from('\x7fELF'), Buffer.alloc(300_000, 7), Buffer.from('tail'.repeat(5000))]);
    for (let i = 997; i < input.length; i += 997) input[i] = i & 0xff; // not just one run
    const r = spawnSync('lz4', ['-l', '-9', '-c'], { input, maxBuffer: 64 << 20 });
    if (r.error || r.status !== 0) return t.skip('lz4 tool not installed');
    const size = Buffer.alloc(4);
    size.writeUInt32LE(input.length);
    const out = lz4LegacyDecode(Buffer.concat([r.stdout, size]));
    assert.equal(out.length, input.length);
    assert.ok(out.equals(input));
    assert.ok(isElf(out));
  });

  it('finds the payload from the boot protocol header', () => {
    const img = Buffer.alloc(4096);
    img[0x1f1] = 3; // setup_sects -> protected-mode code at 4*512
    img.write('HdrS', 0x202, 'latin1');
    img.writeUInt16LE(0x20f, 0x206);
    img.writeUInt32LE(0x100, 0x248);
    img.writeUInt32LE(8, 0x24c);
    Buffer.from('PAYLOAD!').copy(img, 2048 + 0x100);
    assert.equal(bzImagePayload(img)?.toString(), 'PAYLOAD!');
    img.write('XXXX', 0x202, 'latin1');
    assert.equal(bzImagePayload(img), null);
  });
});

describe('kernel package resolution parsing', () => {
  it('reads the candidate from apt-cache policy', () => {
    const policy = `linux-image-cloud-amd64:
  Installed: (none)
  Candidate: 6.1.192-2
  Version table:
     6.1.192-2 500
        500 http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
`;
    assert.equal(parsePolicyCandidate(policy), '6.1.192-2');
    assert.equal(parsePolicyCandidate('x:\n  Installed: (none)\n  Candidate: (none)\n'), null);
  });

  it('reads the concrete image package from the metapackage Depends', () => {
    const show = `Package: linux-image-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Depends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)
`;
    assert.equal(parseMetaDepends(show), 'linux-image-6.1.0-56-cloud-amd64');
    assert.equal(parseMetaDepends('Depends: foo, linux-image-6.1.0-1-cloud-amd64-unsigned | bar\n'), 'linux-image-6.1.0-1-cloud-amd64-unsigned');
    assert.equal(parseMetaDepends('Package: x\n'), null);
  });
});

describe('initramfs payload layout', () => {
  it('maps dist/src/agent and dist/src/protocol under /shoal/agent, skips source maps, adds the addon if present', () => {
    const root = path.join(dir, 'proj');
    fs.mkdirSync(path.join(root, 'agent', 'sub'), { recursive: true });
    fs.mkdirSync(path.join(root, 'protocol'), { recursive: true });
    fs.writeFileSync(path.join(root, 'agent', 'main.js'), '');
    fs.writeFileSync(path.join(root, 'agent', 'main.js.map'), '');
    fs.writeFileSync(path.join(root, 'agent', 'sub', 'x.js'), '');
    fs.writeFileSync(path.join(root, 'protocol', 'frames.js'), '');
    const p = { agentDir: path.join(root, 'agent'), protocolDir: path.join(root, 'protocol'), nativeAddon: path.join(root, 'none.node') };
    assert.deepEqual(
      payloadFiles(p).map((f) => f.dest),
      ['shoal/agent/agent/main.js', 'shoal/agent/agent/sub/x.js', 'shoal/agent/protocol/frames.js'],
    );
    fs.writeFileSync(p.nativeAddon, 'ELF');
    assert.equal(payloadFiles(p).at(-1)?.dest, 'shoal/agent/native/shoal_native.node');
  });
});

describe('asset hashes', () => {
  const kernel = (hash: string): KernelAsset => ({
    dir: '/x',
    hash,
    version: '6.1.0-56-cloud-amd64',
    vmlinuz: '/x/vmlinuz',
    vmlinux: '/x/vmlinux',
    config: '/x/config',
    modulesDir: '/x/modules/6.1.0-56-cloud-amd64',
    pkg: { name: 'linux-image-6.1.0-56-cloud-amd64', version: '6.1.192-2' },
  });

  it('kernel hash follows the resolved package version', () => {
    const a = kernelHash({ name: 'linux-image-6.1.0-56-cloud-amd64', version: '6.1.192-2' });
    assert.equal(a, kernelHash({ name: 'linux-image-6.1.0-56-cloud-amd64', version: '6.1.192-2' }));
    assert.notEqual(a, kernelHash({ name: 'linux-image-6.1.0-56-cloud-amd64', version: '6.1.192-3' }));
  });

  it('rootfs hash is stable and follows the kernel, packages and config texts', () => {
    const r = rootfsRecipe();
    assert.equal(rootfsHash(kernel('k1'), r), rootfsHash(kernel('k1'), rootfsRecipe()));
    assert.notEqual(rootfsHash(kernel('k1'), r), rootfsHash(kernel('k2'), r));
    assert.notEqual(rootfsHash(kernel('k1'), r), rootfsHash(kernel('k1'), { ...r, packages: [...r.packages, 'strace'] }));
    assert.notEqual(
      rootfsHash(kernel('k1'), r),
      rootfsHash(kernel('k1'), { ...r, files: { ...r.files, 'etc/containers/storage.conf': 'changed' } }),
    );
    for (const p of ['podman', 'crun', 'conmon', 'nodejs', 'tini', 'iproute2', 'kmod']) assert.ok(r.packages.includes(p), p);
    assert.ok(r.aptOpts.includes('APT::Install-Recommends "false"'));
  });

  it('image size leaves room: used + 20% + 64 MiB, 4 MiB aligned', () => {
    const s = imageSizeFor(400 << 20);
    assert.equal(s % (4 << 20), 0);
    assert.ok(s >= (400 << 20) * 1.2 + (64 << 20));
  });
});

describe('kernel command line', () => {
  it('BASE_CMDLINE has the serial console and the no-reboot settings', () => {
    for (const k of ['console=ttyS0', 'panic=-1', 'reboot=t', 'tsc=reliable']) assert.ok(BASE_CMDLINE.split(' ').includes(k), k);
  });

  it('adds tsc_early_khz under TCG only', () => {
    assert.equal(guestCmdline('tcg', 2596144), `${BASE_CMDLINE} tsc_early_khz=2596144`);
    assert.equal(guestCmdline('kvm', 2596144), BASE_CMDLINE);
    assert.equal(guestCmdline('tcg', null), BASE_CMDLINE);
  });

  it('reads the host TSC rate from /proc/cpuinfo', () => {
    const vm = 'processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2596.144\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n\nprocessor\t: 1\n';
    const noSys = path.join(dir, 'nocpufreq');
    assert.equal(hostTscKhz(vm, noSys), 2596144);
    assert.equal(hostTscKhz(vm.replace(' constant_tsc', ''), noSys), null);
    const sys = path.join(dir, 'cpu0');
    fs.mkdirSync(path.join(sys, 'cpufreq'), { recursive: true });
    const intel = 'model name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\ncpu MHz\t\t: 1200.000\nflags\t\t: constant_tsc\n';
    assert.equal(hostTscKhz(intel, sys), 2200000);
  });
});

describe('host tools', () => {
  it('names the Debian package to install for a missing tool', () => {
    assert.equal(HOST_TOOLS['qemu-system-x86_64'], 'qemu-system-x86');
    assert.equal(HOST_TOOLS['mkfs.ext4'], 'e2fsprogs');
    assert.equal(HOST_TOOLS.busybox, 'busybox-static');
    assert.equal(HOST_TOOLS.depmod, 'kmod');
    assert.equal(HOST_TOOLS.setpriv, 'util-linux');
    assert.deepEqual(missingTools(['no-such-tool-xyz']), [{ tool: 'no-such-tool-xyz', pkg: 'no-such-tool-xyz' }]);
    assert.doesNotThrow(() => requireTools(['sh']));
    assert.throws(
      () => requireTools(['no-such-tool-xyz']),
      (e: unknown) => e instanceof ShoalError && /apt-get install no-such-tool-xyz/.test(e.message) && !e.message.includes('\n'),
    );
  });
});

describe('KVM boot probe', () => {
  const run = (over: Partial<SerialRun>): SerialRun => ({ matched: false, timedOut: false, output: '', code: null, signal: null, ms: 10, ...over });
  const MSR_FAILURE = 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x...\nqemu-system-x86_64: ../target/i386/kvm/kvm.c:2893: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs\' failed.';

  it('a nested host that refuses MSR 0x10a: retried with -cpu host,-arch-capabilities, which the launch then uses', async () => {
    const tried: string[] = [];
    const v = await probeKvm('k', 'i', 'c', 1000, async (flags) => {
      tried.push(['host', ...flags].join(','));
      return flags.length === 0 ? run({ signal: 'SIGABRT', output: MSR_FAILURE }) : run({ matched: true, ms: 900 });
    });
    assert.deepEqual(tried, ['host', 'host,-arch-capabilities']);
    assert.equal(v.accel, 'kvm');
    assert.deepEqual(v.kvmCpuFlags, ['-arch-capabilities']);
    assert.match(v.reason, /-cpu host,-arch-capabilities .*failed to set MSR 0x10a/);
  });

  it('plain -cpu host first: no flags recorded when it boots', async () => {
    const v = await probeKvm('k', 'i', 'c', 1000, async () => run({ matched: true }));
    assert.equal(v.accel, 'kvm');
    assert.equal(v.kvmCpuFlags, undefined);
  });

  it('neither boots: TCG, with both failures in the reason; a timeout is final at once', async () => {
    const failed = await probeKvm('k', 'i', 'c', 1000, async () => run({ code: 1, output: 'no' }));
    assert.equal(failed.accel, 'tcg');
    assert.match(failed.reason, /-cpu host failed .*; -cpu host,-arch-capabilities failed/);
    let attempts = 0;
    const hung = await probeKvm('k', 'i', 'c', 1000, async () => { attempts++; return run({ timedOut: true }); });
    assert.equal(hung.accel, 'tcg');
    assert.equal(attempts, 1);
    assert.match(hung.reason, /timed out/);
  });
});
