/**
 * Jailer argv and chroot layout, checked against docs/jailer.md:
 *   jailer --id <id> --exec-file <exec_file> --uid <uid> --gid <gid>
 *          [--parent-cgroup <relative_path>] [--cgroup-version <cgroup-version>]
 *          [--cgroup <cgroup>] [--chroot-base-dir <chroot_base>] [--netns <netns>]
 *          [--resource-limit <resource=value>] [--daemonize] [--new-pid-ns]
 *          [--...extra arguments for Firecracker]
 * The jail is <chroot_base>/<exec_file_name>/<id>/root; the pid goes to
 * <root>/<exec_file_name>.pid; the jailer itself passes --id to Firecracker.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { DEFAULT_CHROOT_BASE, JailPlanner, jailerArgv, jailLayout, type JailerOptions } from '../../src/vmm/firecracker/jailer';
import { jailedLaunch } from '../../src/vmm/firecracker/launch';
import { isJailOf } from '../../src/vmm/select';

const base: JailerOptions = { jailerBinary: '/usr/local/bin/jailer', firecrackerBinary: '/usr/local/bin/firecracker', id: '0123456789ab', uid: 123, gid: 100 };

/** Parses an argv into the documented option set, failing on anything undocumented. */
function parseJailerArgv(argv: string[]): { opts: Record<string, string[]>; flags: Set<string>; extra: string[] } {
  const valued = new Set(['--id', '--exec-file', '--uid', '--gid', '--parent-cgroup', '--cgroup-version', '--cgroup', '--chroot-base-dir', '--netns', '--resource-limit']);
  const flagSet = new Set(['--daemonize', '--new-pid-ns']);
  const opts: Record<string, string[]> = {};
  const flags = new Set<string>();
  let i = 1;
  for (; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (valued.has(a)) (opts[a] ??= []).push(argv[++i]!);
    else if (flagSet.has(a)) flags.add(a);
    else assert.fail(`undocumented jailer argument ${a}`);
  }
  return { opts, flags, extra: argv.slice(i + 1) };
}

describe('jailer argv', () => {
  it('has the mandatory options, cgroup v2 and the default chroot base', () => {
    const argv = jailerArgv(base);
    assert.equal(argv[0], '/usr/local/bin/jailer');
    const { opts, flags, extra } = parseJailerArgv(argv);
    assert.deepEqual(opts['--id'], ['0123456789ab']);
    assert.deepEqual(opts['--exec-file'], ['/usr/local/bin/firecracker']);
    assert.deepEqual(opts['--uid'], ['123']);
    assert.deepEqual(opts['--gid'], ['100']);
    assert.deepEqual(opts['--cgroup-version'], ['2']);
    assert.deepEqual(opts['--chroot-base-dir'], [DEFAULT_CHROOT_BASE]);
    assert.equal(flags.size, 0, 'never --daemonize: shoal keeps the VMM as its child');
    // Firecracker arguments after "--": the socket location, never --id (the jailer passes it).
    assert.deepEqual(extra, ['--api-sock', '/fc.sock']);
  });

  it('passes the optional documented options', () => {
    const argv = jailerArgv({
      ...base,
      chrootBaseDir: '/var/lib/shoal/jail',
      cgroupVersion: 1,
      parentCgroup: 'shoal/vms',
      cgroups: { 'cpuset.cpus': '0-1', 'cpuset.mems': '0' },
      netns: '/var/run/netns/shoal0',
      resourceLimits: { 'no-file': 1024, fsize: 250000000 },
      firecrackerArgs: ['--level', 'Debug'],
    });
    const { opts, flags, extra } = parseJailerArgv(argv);
    assert.deepEqual(opts['--cgroup'], ['cpuset.cpus=0-1', 'cpuset.mems=0']);
    assert.deepEqual(opts['--cgroup-version'], ['1']);
    assert.deepEqual(opts['--parent-cgroup'], ['shoal/vms']);
    assert.deepEqual(opts['--netns'], ['/var/run/netns/shoal0']);
    assert.deepEqual(opts['--resource-limit'], ['no-file=1024', 'fsize=250000000']);
    assert.deepEqual(opts['--chroot-base-dir'], ['/var/lib/shoal/jail']);
    // Never --new-pid-ns: the jailer would exit 0 at once (env.rs exec_into_new_pid_ns), leaving shoal no child to watch.
    assert.equal(flags.size, 0);
    assert.deepEqual(extra, ['--api-sock', '/fc.sock', '--level', 'Debug']);
  });

  it('refuses what the jailer would refuse', () => {
    assert.throws(() => jailerArgv({ ...base, id: 'has_underscore' }), /1-64 letters, digits or hyphens/);
    assert.throws(() => jailerArgv({ ...base, id: 'x'.repeat(65) }), /1-64/);
    // v1.16.1's validate_exec_file only canonicalizes and wants a file: any name will do.
    assert.doesNotThrow(() => jailerArgv({ ...base, firecrackerBinary: '/usr/bin/vmm' }));
    assert.throws(() => jailerArgv({ ...base, firecrackerBinary: 'firecracker' }), /absolute/);
    assert.throws(() => jailerArgv({ ...base, uid: -1 }), /uid/);
    assert.throws(() => jailerArgv({ ...base, parentCgroup: '/abs' }), /relative/);
    assert.throws(() => jailerArgv({ ...base, parentCgroup: 'a/../..' }), /relative/);
  });
});

describe('jail layout', () => {
  it('matches the documented <chroot_base>/<exec_file_name>/<id>/root layout', () => {
    const l = jailLayout({ firecrackerBinary: '/usr/bin/firecracker', id: '551e7604-e35c-42b3-b825-416853441234' });
    assert.equal(l.root, '/srv/jailer/firecracker/551e7604-e35c-42b3-b825-416853441234/root');
    assert.equal(l.jailDir, '/srv/jailer/firecracker/551e7604-e35c-42b3-b825-416853441234');
    assert.equal(l.apiSocket, `${l.root}/fc.sock`);
    assert.equal(l.vsockHost, `${l.root}/vsock.sock`);
    assert.equal(l.vsockInJail, '/vsock.sock');
    assert.equal(l.pidFile, `${l.root}/firecracker.pid`);
    // A versioned binary name changes the middle component, as the doc says (last path component).
    assert.equal(jailLayout({ firecrackerBinary: '/opt/firecracker-v1.16.1-x86_64', id: 'a' }).root, '/srv/jailer/firecracker-v1.16.1-x86_64/a/root');
    // Unix socket paths must stay under 108 bytes for shoal's 12-hex ids.
    assert.ok(jailLayout({ firecrackerBinary: '/usr/bin/firecracker', id: '0123456789ab' }).vsockHost.length + '_65535'.length < 108);
  });

  it('plans hard links into the jail root and names files as Firecracker sees them', () => {
    const p = new JailPlanner(jailLayout(base));
    assert.equal(p.place('/var/cache/shoal/vmlinux', 'kernel'), '/kernel-vmlinux');
    assert.equal(p.place('/var/lib/shoal/vms/x/scratch.img', 'drive-vdb'), '/drive-vdb-scratch.img');
    assert.equal(p.place('/var/cache/shoal/vmlinux', 'kernel'), '/kernel-vmlinux', 'placing twice is one link');
    assert.deepEqual(p.links.map((l) => l.to), ['/srv/jailer/firecracker/0123456789ab/root/kernel-vmlinux', '/srv/jailer/firecracker/0123456789ab/root/drive-vdb-scratch.img']);
  });

  it('jailedLaunch runs the jailer under setpriv and points the API at the jail', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-jl-'));
    try {
      const fc = path.join(tmp, 'firecracker');
      fs.writeFileSync(fc, '', { mode: 0o755 });
      const l = jailedLaunch({ jailer: { jailerBinary: '/usr/local/bin/jailer', uid: 1000, gid: 1000, chrootBaseDir: path.join(tmp, 'base') }, binary: fc, id: '0123456789ab', setpriv: '/usr/bin/setpriv' });
      assert.deepEqual(l.argv.slice(0, 5), ['/usr/bin/setpriv', '--pdeathsig', 'KILL', '--', '/usr/local/bin/jailer']);
      assert.equal(l.apiSocket, path.join(tmp, 'base/firecracker/0123456789ab/root/fc.sock'));
      assert.equal(l.vsockForVmm, '/vsock.sock');
      assert.equal(l.logForVmm, '/firecracker.log');
      assert.equal(l.place('/k/vmlinux', 'kernel'), '/kernel-vmlinux');
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('canonicalizes like the jailer: the chroot base is created, and the jail is named after the resolved binary (items 6, 7)', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-jc-'));
    try {
      const real = path.join(tmp, 'release', 'firecracker-v1.16.1-x86_64');
      fs.mkdirSync(path.dirname(real));
      fs.writeFileSync(real, '', { mode: 0o755 });
      const link = path.join(tmp, 'firecracker');
      fs.symlinkSync(real, link);
      const l = jailedLaunch({ jailer: { jailerBinary: '/j', uid: 1, gid: 1, chrootBaseDir: path.join(tmp, 'jails') }, binary: link, id: 'abc', setpriv: false });
      assert.ok(fs.statSync(path.join(tmp, 'jails')).isDirectory(), 'the missing chroot base was created');
      assert.equal(l.jail!.root, path.join(fs.realpathSync(tmp), 'jails', 'firecracker-v1.16.1-x86_64', 'abc', 'root'));
      // A base reached through a symlink is named by its canonical path, as the jailer names it.
      fs.symlinkSync(path.join(tmp, 'jails'), path.join(tmp, 'jail-link'));
      const viaLink = jailedLaunch({ jailer: { jailerBinary: '/j', uid: 1, gid: 1, chrootBaseDir: path.join(tmp, 'jail-link') }, binary: link, id: 'abc', setpriv: false });
      assert.equal(viaLink.jail!.root, l.jail!.root);
      assert.ok(l.argv.includes(real), 'the jailer is given the canonical exec file');
      fs.writeFileSync(path.join(tmp, 'not-a-dir'), '');
      assert.throws(() => jailedLaunch({ jailer: { jailerBinary: '/j', uid: 1, gid: 1, chrootBaseDir: path.join(tmp, 'not-a-dir') }, binary: link, id: 'abc', setpriv: false }), /chroot base/);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('jail ownership', () => {
  it('hands what Firecracker writes (read-write drives) to the jail user, and nothing else', { skip: process.getuid?.() === 0 ? false : 'needs root (chowns to the jail user)' }, async () => {
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-jail-'));
    try {
      const fc = path.join(base, 'bin', 'firecracker');
      fs.mkdirSync(path.dirname(fc));
      fs.writeFileSync(fc, '', { mode: 0o755 });
      const launch = jailedLaunch({ jailer: { jailerBinary: '/usr/bin/jailer', uid: 4242, gid: 4343, chrootBaseDir: base }, binary: fc, id: 'vm-1', setpriv: false });
      const kernel = path.join(base, 'vmlinux');
      const scratch = path.join(base, 'scratch.img');
      for (const f of [kernel, scratch]) fs.writeFileSync(f, 'x');
      assert.equal(launch.owner?.uid, 4242);
      const kernelInJail = launch.place(kernel, 'kernel');
      const scratchInJail = launch.place(scratch, 'drive-scratch', true);
      // The jailer makes the jail root; materialise runs once it exists.
      fs.mkdirSync(launch.jail!.root, { recursive: true });
      await launch.materialise();
      const owner = (inJail: string): string => {
        const st = fs.statSync(path.join(launch.jail!.root, inJail));
        return `${st.uid}:${st.gid}`;
      };
      assert.equal(owner(scratchInJail), '4242:4343');
      assert.equal(fs.statSync(scratch).ino, fs.statSync(path.join(launch.jail!.root, scratchInJail)).ino, 'the writable disk is the same file, linked');
      assert.equal(owner(kernelInJail), `${process.getuid!()}:${process.getgid!()}`);
    } finally {
      fs.rmSync(base, { recursive: true, force: true });
    }
  });
});

describe('the jail a record names', () => {
  it('is removed only when it has the shape of that VM\'s jail under the chroot base', () => {
    const base = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-jb-')));
    try {
      const jailer = { uid: 1, gid: 1, chrootBaseDir: base };
      // Made by an older binary: its name is in the record, whatever binary is installed now.
      assert.equal(isJailOf(path.join(base, 'firecracker-v1.15.0-x86_64', 'aaaa11112222'), 'aaaa11112222', jailer), true);
      for (const dir of [
        path.join(base, 'firecracker', 'bbbb11112222'),
        path.join(base, 'aaaa11112222'),
        `${base}/firecracker/../../etc/aaaa11112222`,
        '/etc/firecracker/aaaa11112222',
        'relative/firecracker/aaaa11112222',
      ]) assert.equal(isJailOf(dir, 'aaaa11112222', jailer), false, dir);
    } finally {
      fs.rmSync(base, { recursive: true, force: true });
    }
  });
});
