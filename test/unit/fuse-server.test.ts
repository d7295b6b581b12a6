/**
 * FuseServer and the /dev/fuse bridge, for real (root and /dev/fuse here): a temporary host
 * directory served through a real FUSE mount on this host, exercised by child processes
 * (sh, cat, dd, mv, ln, ...), plus protocol-level requests straight to a server for the
 * confinement cases a local mount cannot reach (the local kernel resolves '..' and symlinks
 * itself, and a real guest kernel may send anything).
 *
 * The FUSE read loop runs in this process, so every access to a mountpoint goes through an
 * async child process: a synchronous fs call on the mount here would deadlock. So would
 * spawn() with a cwd on the mount: libuv's spawn waits for the child's exec, and the child's
 * chdir waits for a FUSE reply from this very thread. Children cd in their script instead.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { mountFuse, type FuseDevice } from '../../src/fuse/device';
import * as P from '../../src/fuse/protocol';
import { HandleBudget, MAX_OPEN_HANDLES_PER_VM } from '../../src/fuse/handle-budget';
import { FuseServer } from '../../src/fuse/server';

const E = os.constants.errno;
const canMount = process.getuid?.() === 0 && fs.existsSync('/dev/fuse');
const SECRET = 'host secret outside the mapped directory';

let base: string;
/** Served read-write at `mnt`. */
let root: string;
/** Next to root: nothing may reach it. */
let outside: string;
let mnt: string;
/** Served read-only at `roMnt`, mounted read-write so that only the server refuses changes. */
let roRoot: string;
let roMnt: string;

interface Served {
  server: FuseServer;
  device: FuseDevice;
}
const served: Served[] = [];
/** Errors the device loops reported; none are expected. */
const deviceErrors: Error[] = [];
/** Opcode name -> requests seen on the read-write mount. */
const seen = new Map<string, number>();

async function serve(dir: string, mountpoint: string, readOnly: boolean, mountReadOnly = readOnly): Promise<Served> {
  const server = new FuseServer(dir, { readOnly });
  const device = await mountFuse(mountpoint, { readOnly: mountReadOnly, name: 'shoal-test' });
  const s = { server, device };
  served.push(s);
  device.start(
    (request) => {
      if (mountpoint === mnt) {
        const name = P.opcodeName(request.readUInt32LE(4));
        seen.set(name, (seen.get(name) ?? 0) + 1);
      }
      const reply = server.handle(request);
      if (reply) device.reply(reply);
    },
    (err) => deviceErrors.push(err),
  );
  return s;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a shell script in `cwd` (default: the read-write mountpoint). */
function sh(script: string, cwd = mnt, timeoutMs = 20_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', `cd "$1" || exit 125\n${script}`, 'sh', cwd], { cwd: os.tmpdir(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`timed out: ${script}`));
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** sh that must succeed; returns stdout. */
async function ok(script: string, cwd?: string): Promise<string> {
  const r = await sh(script, cwd);
  assert.equal(r.code, 0, `${script}\n${r.stderr}`);
  return r.stdout;
}

const host = (...parts: string[]): string => path.join(root, ...parts);
const sha256 = (file: string): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

/** Everything about a tree that a change could touch. */
function snapshot(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const name of fs.readdirSync(d).sort()) {
      const p = path.join(d, name);
      const st = fs.lstatSync(p);
      const content = st.isFile() ? sha256(p) : st.isSymbolicLink() ? fs.readlinkSync(p) : '';
      out.push(`${path.relative(dir, p)} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.size} ${st.mtimeMs} ${st.nlink} ${content}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(dir);
  return out;
}

function ourMounts(): string[] {
  return fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').filter((l) => base && l.includes(base));
}

before(async () => {
  if (!canMount) return;
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-fuse-'));
  root = path.join(base, 'root');
  outside = path.join(base, 'outside');
  // Deep, so that '../outside' resolved from the mountpoint by this host's kernel finds nothing.
  mnt = path.join(base, 'mnt', 'deep', 'rw');
  roRoot = path.join(base, 'ro-root');
  roMnt = path.join(base, 'mnt', 'deep', 'ro');
  for (const d of [root, outside, mnt, roRoot, roMnt]) fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(outside, 'secret'), SECRET);
  fs.mkdirSync(path.join(outside, 'inner'));
  fs.writeFileSync(path.join(outside, 'inner', 'secret'), SECRET);
  fs.symlinkSync(path.join(outside, 'secret'), host('abs-link'));
  fs.symlinkSync('../outside/secret', host('rel-link'));
  fs.symlinkSync('../outside', host('dir-link'));
  fs.writeFileSync(path.join(roRoot, 'existing'), 'read only content\n');
  fs.mkdirSync(path.join(roRoot, 'sub'));
  fs.writeFileSync(path.join(roRoot, 'sub', 'file'), 'nested\n');
  await serve(root, mnt, false);
  await serve(roRoot, roMnt, true, false);
});

after(async () => {
  if (!canMount) return;
  for (const { device, server } of served.reverse()) {
    await device.unmount();
    server.close();
  }
  const left = ourMounts();
  fs.rmSync(base, { recursive: true, force: true });
  assert.deepEqual(left, [], 'no mount may be left behind');
  assert.deepEqual(deviceErrors, []);
});

describe('FUSE mount: files', { skip: !canMount && 'needs root and /dev/fuse' }, () => {
  it('creates, reads, writes, appends and truncates', async () => {
    assert.equal(await ok('printf hello > f && cat f'), 'hello');
    assert.equal(await ok("printf ' world' >> f && cat f"), 'hello world');
    assert.equal(fs.readFileSync(host('f'), 'utf8'), 'hello world');
    assert.equal(await ok('truncate -s 5 f && cat f'), 'hello');
    assert.equal(await ok('printf abcdef > g && printf XY | dd of=g bs=1 seek=2 conv=notrunc 2>/dev/null && cat g'), 'abXYef');
    assert.equal(await ok(': > g && wc -c < g'), '0\n');
    assert.equal(fs.readFileSync(host('f'), 'utf8'), 'hello');
    assert.equal(fs.statSync(host('g')).size, 0);
    // Written on the host, read through the mount (the attribute cache is 1 s; this is a new name).
    fs.writeFileSync(host('from-host'), 'made on the host');
    assert.equal(await ok('cat from-host'), 'made on the host');
  });

  it('renames, over an existing file and with a directory full of files', async () => {
    await ok('printf one > r1 && printf two > r2 && mv -f r1 r2');
    assert.equal(fs.existsSync(host('r1')), false);
    assert.equal(fs.readFileSync(host('r2'), 'utf8'), 'one');
    // The kernel keeps using the node ids of d1/inner/x after the rename: their paths must follow.
    await ok('mkdir -p d1/inner && printf x > d1/inner/x && cat d1/inner/x > /dev/null && mv d1 d2 && printf y >> d2/inner/x');
    assert.equal(fs.readFileSync(host('d2', 'inner', 'x'), 'utf8'), 'xy');
    assert.equal(await ok('cat d2/inner/x && ls d2/inner'), 'xyx\n');
    await ok('mv d2/inner/x ./moved-x && mv d2 d1');
    assert.equal(fs.readFileSync(host('moved-x'), 'utf8'), 'xy');
    assert.deepEqual(fs.readdirSync(host('d1', 'inner')), []);
    // A file kept open across a rename of its directory keeps writing to it.
    await ok('exec 3> d1/inner/open && mv d1 d3 && echo still >&3 && exec 3>&-');
    assert.equal(fs.readFileSync(host('d3', 'inner', 'open'), 'utf8'), 'still\n');
  });

  it('unlinks, and removes directories only when empty', async () => {
    await ok('printf gone > u && rm u');
    assert.equal(fs.existsSync(host('u')), false);
    assert.equal((await sh('cat u')).code, 1);
    await ok('mkdir -p tree/a && printf x > tree/a/f');
    const r = await sh('rmdir tree/a');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Directory not empty/);
    assert.ok(fs.existsSync(host('tree', 'a', 'f')));
    await ok('rm tree/a/f && rmdir tree/a tree');
    assert.equal(fs.existsSync(host('tree')), false);
    assert.match((await sh('rmdir f')).stderr, /Not a directory/);
  });

  it('keeps an unlinked file usable through its open descriptor', async () => {
    // fstat after the 1 s attribute cache expired reaches the server, without a file handle.
    const script = `perl -e 'open(my $f, "+>", "tmpf") or die "$!"; unlink "tmpf" or die "$!"; print $f "data"; $f->flush; select(undef, undef, undef, 1.1); my @s = stat($f) or die "fstat: $!"; seek($f, 0, 0); print scalar(<$f>), " $s[7] $s[3]\\n"'`;
    assert.equal(await ok(script), 'data 4 0\n');
    assert.equal(fs.existsSync(host('tmpf')), false);
  });

  it('handles names that are not UTF-8', async () => {
    await ok("printf raw > \"$(printf 'caf\\351')\" && ls | grep -c '^caf'");
    const names = fs.readdirSync(root, { encoding: 'buffer' }).filter((n) => n.subarray(0, 3).toString() === 'caf');
    assert.deepEqual(names, [Buffer.from([0x63, 0x61, 0x66, 0xe9])]);
    assert.equal(await ok("cat \"$(printf 'caf\\351')\" && rm \"$(printf 'caf\\351')\""), 'raw');
  });

  it('makes symlinks with verbatim targets and reads them back', async () => {
    assert.equal(await ok("ln -s 'some/where/../else' s1 && readlink s1"), 'some/where/../else\n');
    assert.equal(await ok('ln -s /etc/passwd s2 && readlink s2 && stat -c %F s2'), '/etc/passwd\nsymbolic link\n');
    assert.equal(fs.readlinkSync(host('s1')), 'some/where/../else');
    assert.equal(fs.readlinkSync(host('s2')), '/etc/passwd');
    assert.ok(fs.lstatSync(host('s2')).isSymbolicLink());
    await ok('printf target > t && ln -s t s3');
    assert.equal(await ok('cat s3'), 'target'); // resolved by the (here: local) kernel, inside the mount
  });

  it('hard-links: one inode, two names, nlink 2, the host inode number', async () => {
    const out = await ok('printf a > h1 && ln h1 h2 && stat -c "%h %i" h1 h2 && printf b >> h2 && cat h1');
    const [l1, l2, content] = out.split('\n');
    assert.equal(l1, l2);
    assert.equal(l1, `2 ${fs.statSync(host('h1')).ino}`);
    assert.equal(content, 'ab');
    assert.equal(fs.statSync(host('h2')).ino, fs.statSync(host('h1')).ino);
    // Removing one name leaves the other working.
    assert.equal(await ok('rm h1 && stat -c %h h2 && cat h2'), '1\nab');
  });

  it('changes mode and owner on the host, without set-id bits', async () => {
    await ok('printf x > m && chmod 640 m && chown 1234:5678 m');
    const st = fs.statSync(host('m'));
    assert.equal(st.mode & 0o7777, 0o640);
    assert.equal(st.uid, 1234);
    assert.equal(st.gid, 5678);
    assert.equal(await ok('stat -c "%a %u %g" m'), '640 1234 5678\n');
    // A guest must not be able to plant a setuid executable in a host directory.
    assert.equal(await ok('chmod 4755 m && stat -c %a m'), '755\n');
    assert.equal(fs.statSync(host('m')).mode & 0o7777, 0o755);
  });

  it('creates files owned by the caller', async () => {
    await ok('mkdir owned && chmod 777 owned && setpriv --reuid=4321 --regid=8765 --clear-groups sh -c "mkdir owned/dir && : > owned/file && ln -s x owned/link"');
    for (const name of ['file', 'dir', 'link']) {
      const st = fs.lstatSync(host('owned', name));
      assert.equal(`${st.uid}:${st.gid}`, '4321:8765', name);
    }
  });

  it('sets timestamps (touch -d, touch -a, touch now)', async () => {
    await ok("printf x > ts && touch -m -d '2001-02-03 04:05:06 UTC' ts && touch -a -d '2002-03-04 05:06:07 UTC' ts");
    const st = fs.statSync(host('ts'));
    assert.equal(st.mtimeMs, Date.UTC(2001, 1, 3, 4, 5, 6));
    assert.equal(st.atimeMs, Date.UTC(2002, 2, 4, 5, 6, 7));
    assert.equal(await ok('stat -c "%Y %X" ts'), `${Date.UTC(2001, 1, 3, 4, 5, 6) / 1000} ${Date.UTC(2002, 2, 4, 5, 6, 7) / 1000}\n`);
    const before = Date.now();
    await ok('touch ts');
    assert.ok(Math.abs(fs.statSync(host('ts')).mtimeMs - before) < 5000);
  });

  it('fsyncs', async () => {
    const fsyncs = seen.get('FSYNC') ?? 0;
    await ok('dd if=/dev/zero of=synced bs=4k count=4 conv=fsync 2>/dev/null && sync synced && sync -d synced');
    assert.ok((seen.get('FSYNC') ?? 0) >= fsyncs + 2, 'FSYNC reached the server');
    assert.equal(fs.statSync(host('synced')).size, 16384);
  });

  it('moves 64 MiB byte for byte both ways', async () => {
    fs.writeFileSync(host('big.bin'), crypto.randomBytes(64 * 1024 * 1024));
    const expected = sha256(host('big.bin'));
    assert.equal((await ok('sha256sum big.bin')).split(' ')[0], expected);
    await ok('dd if=big.bin of=copy.bin bs=1M 2>/dev/null');
    assert.equal(sha256(host('copy.bin')), expected);
    await ok('rm big.bin copy.bin');
  });

  it('keeps sparse files sparse', async () => {
    await ok('truncate -s 1G sparse && printf x | dd of=sparse bs=1 seek=536870912 conv=notrunc 2>/dev/null');
    const st = fs.statSync(host('sparse'));
    assert.equal(st.size, 1024 ** 3);
    assert.ok(st.blocks * 512 < 1024 * 1024, `allocated ${st.blocks * 512} bytes`);
    assert.equal(await ok('stat -c %s sparse && dd if=sparse bs=1 skip=536870912 count=1 2>/dev/null'), '1073741824\nx');
    assert.ok(Number((await ok('du -k sparse')).split('\t')[0]) < 1024);
    await ok('rm sparse');
  });

  it('serves two writers at once', async () => {
    const size = 8 * 1024 * 1024;
    await Promise.all([
      ok(`head -c ${size} /dev/zero | tr '\\0' A > w1`),
      ok(`head -c ${size} /dev/zero | tr '\\0' B > w2`),
    ]);
    for (const [name, byte] of [['w1', 0x41], ['w2', 0x42]] as const) {
      const data = fs.readFileSync(host(name));
      assert.equal(data.length, size);
      assert.ok(data.every((b) => b === byte), `${name} is all ${String.fromCharCode(byte)}`);
    }
    await ok('rm w1 w2');
  });

  it('lists a directory of 2000 entries completely', async () => {
    await ok('mkdir many && cd many && i=0; while [ $i -lt 2000 ]; do : > "f$i"; i=$((i+1)); done');
    const listed = (await ok('ls -f many')).trim().split('\n').sort();
    const expected = ['.', '..', ...Array.from({ length: 2000 }, (_, i) => `f${i}`)].sort();
    assert.deepEqual(listed, expected);
    assert.equal(fs.readdirSync(host('many')).length, 2000);
    assert.equal(await ok('find many -type f | wc -l'), '2000\n');
    await ok('rm -r many');
  });

  it('makes FIFOs on the host, refuses device nodes', async () => {
    await ok('mkfifo pipe && stat -c %F pipe');
    assert.ok(fs.lstatSync(host('pipe')).isFIFO());
    const r = await sh('mknod dev c 1 3');
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Operation not permitted/);
    assert.equal(fs.existsSync(host('dev')), false);
  });

  it('reports free space (statfs)', async () => {
    const [blocks, size] = (await ok('stat -f -c "%b %S" .')).trim().split(' ').map(Number);
    const s = fs.statfsSync(root);
    assert.equal(blocks, s.blocks);
    assert.equal(size, s.bsize);
  });
});

describe('FUSE mount: confinement', { skip: !canMount && 'needs root and /dev/fuse' }, () => {
  it('shows host symlinks that point outside as symlinks and never follows them', async () => {
    assert.equal(await ok('stat -c %F abs-link rel-link dir-link'), 'symbolic link\nsymbolic link\nsymbolic link\n');
    assert.equal(await ok('readlink abs-link rel-link dir-link'), `${path.join(outside, 'secret')}\n../outside/secret\n../outside\n`);
    // Resolved from the mountpoint, '../outside' is not the host's outside directory.
    for (const script of ['cat rel-link', 'cat dir-link/secret', 'ls dir-link/', 'cat dir-link/inner/secret']) {
      const r = await sh(script);
      assert.notEqual(r.code, 0, script);
      assert.ok(!r.stdout.includes(SECRET), script);
    }
  });

  it('cannot rename or link out of the mount', async () => {
    await ok('printf mine > keep');
    const renameScript = (to: string): string => `perl -e 'rename($ARGV[0], $ARGV[1]) or die "$!\\n"' keep ${to}`;
    for (const script of [renameScript(path.join(outside, 'stolen')), `ln keep ${path.join(outside, 'linked')}`]) {
      const r = await sh(script);
      assert.notEqual(r.code, 0, script);
      assert.match(r.stderr, /cross-device/i, script);
    }
    assert.deepEqual(fs.readdirSync(outside).sort(), ['inner', 'secret']);
    assert.equal(fs.readFileSync(host('keep'), 'utf8'), 'mine');
  });
});

describe('FUSE mount: read-only server', { skip: !canMount && 'needs root and /dev/fuse' }, () => {
  it('refuses every change with EROFS, even on a read-write mount, and leaves the host untouched', async () => {
    const before = snapshot(roRoot);
    const attempts = [
      'printf x > existing',
      'printf x >> existing',
      ': > newfile',
      'rm existing',
      'chmod 777 existing',
      'chown 1:1 existing',
      'truncate -s 0 existing',
      'touch existing',
      'mkdir newdir',
      'rmdir sub',
      'rm sub/file',
      'ln -s x newlink',
      'ln existing newhardlink',
      'mv existing moved',
      'mkfifo newfifo',
      'dd if=/dev/zero of=existing bs=1 count=1 conv=notrunc',
    ];
    for (const script of attempts) {
      const r = await sh(script, roMnt);
      assert.notEqual(r.code, 0, script);
      assert.match(r.stderr, /Read-only file system/, `${script}: ${r.stderr}`);
    }
    assert.equal(await ok('cat existing sub/file && ls', roMnt), 'read only content\nnested\nexisting\nsub\n');
    assert.deepEqual(snapshot(roRoot), before);
  });

  it('mounts read-only in the kernel when asked', async () => {
    const mountpoint = path.join(base, 'mnt', 'deep', 'ro-flag');
    fs.mkdirSync(mountpoint);
    await serve(roRoot, mountpoint, true);
    const line = ourMounts().find((l) => l.split(' ')[1] === mountpoint);
    assert.match(line ?? '', / fuse (ro|ro,[^ ]*) /);
    const r = await sh(': > newfile', mountpoint);
    assert.match(r.stderr, /Read-only file system/);
    assert.equal(await ok('cat existing', mountpoint), 'read only content\n');
  });
});

describe('FuseDevice', { skip: !canMount && 'needs root and /dev/fuse' }, () => {
  it('unmounts a busy mount promptly, aborting the connection', async () => {
    const dir = fs.mkdtempSync(path.join(base, 'busy-root-'));
    const mountpoint = path.join(base, 'mnt', 'busy');
    fs.mkdirSync(mountpoint);
    const { device } = await serve(dir, mountpoint, false);
    const busy = spawn('sh', ['-c', 'cd "$1" && exec sleep 30', 'sh', mountpoint], { stdio: 'ignore' });
    await new Promise((r) => setTimeout(r, 100));
    const started = Date.now();
    await device.unmount();
    await device.finished;
    assert.ok(Date.now() - started < 5000, `unmount took ${Date.now() - started} ms`);
    busy.kill('SIGKILL');
    assert.deepEqual(ourMounts().filter((l) => l.includes(mountpoint)), []);
    assert.ok(!fs.readFileSync('/proc/self/mounts', 'utf8').includes('shoal-fusectl-'), 'temporary fusectl mount is gone');
  });
});

// ---------------------------------------------------------------------------------------------
// Protocol level: what a hostile guest kernel could send.

/** Plays the guest kernel against a server: builds requests, checks and decodes replies. */
class GuestKernel {
  private unique = 1n;
  constructor(readonly server: FuseServer) {}

  call(opcode: number, nodeid: bigint | number, ...body: Buffer[]): { error: number; body: Buffer } {
    const unique = this.unique++;
    const reply = this.server.handle(P.encodeRequest({ opcode, unique, nodeid: BigInt(nodeid), uid: 0, gid: 0, pid: 1 }, ...body));
    assert.ok(reply, `${P.opcodeName(opcode)} got no reply`);
    const decoded = P.decodeReply(reply);
    assert.equal(decoded.unique, unique);
    return { error: decoded.error === 0 ? 0 : -decoded.error, body: decoded.body };
  }

  init(): ReturnType<typeof P.InitOut.decode> {
    const r = this.call(P.Opcode.INIT, 0, P.InitIn.encode({ major: 7, minor: 38, max_readahead: 131072, flags: 0xffffffff }));
    assert.equal(r.error, 0);
    return P.InitOut.decode(r.body);
  }

  lookup(parent: bigint | number, name: string | Buffer): { error: number; nodeid: bigint; mode: number } {
    const r = this.call(P.Opcode.LOOKUP, parent, cString(name));
    if (r.error) return { error: r.error, nodeid: 0n, mode: 0 };
    const e = P.decodeEntryOut(r.body);
    return { error: 0, nodeid: e.nodeid, mode: e.attr.mode };
  }
}

function cString(s: string | Buffer): Buffer {
  return Buffer.concat([typeof s === 'string' ? Buffer.from(s) : s, Buffer.from([0])]);
}

describe('FuseServer protocol: confinement', () => {
  let dir: string;
  let served: string;
  let beyond: string;
  let kernel: GuestKernel;

  const beyondListing = (): string[] => snapshot(beyond);
  let beyondBefore: string[];

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-fuse-proto-'));
    served = path.join(dir, 'served');
    beyond = path.join(dir, 'beyond');
    fs.mkdirSync(served);
    fs.mkdirSync(path.join(beyond, 'inner'), { recursive: true });
    fs.writeFileSync(path.join(beyond, 'secret'), SECRET);
    fs.writeFileSync(path.join(beyond, 'inner', 'secret'), SECRET);
    fs.symlinkSync(path.join(beyond, 'secret'), path.join(served, 'abs-link'));
    fs.symlinkSync('../beyond', path.join(served, 'dir-link'));
    fs.symlinkSync(beyond, path.join(served, 'abs-dir-link'));
    fs.mkdirSync(path.join(served, 'swap', 'inner'), { recursive: true });
    fs.writeFileSync(path.join(served, 'swap', 'inner', 'secret'), 'inside');
    fs.writeFileSync(path.join(served, 'plain'), 'plain');
    kernel = new GuestKernel(new FuseServer(served, { readOnly: false }));
    kernel.init();
    beyondBefore = beyondListing();
  });
  after(() => {
    kernel?.server.close();
    const beyondAfter = beyondListing();
    const nextToRoot = fs.readdirSync(dir).sort();
    fs.rmSync(dir, { recursive: true, force: true });
    assert.deepEqual(beyondAfter, beyondBefore, 'nothing outside the root changed');
    assert.deepEqual(nextToRoot, ['beyond', 'served'], 'nothing appeared next to the root');
  });

  it('answers nothing but EIO before INIT, and negotiates INIT', () => {
    const fresh = new GuestKernel(new FuseServer(served, { readOnly: false }));
    assert.equal(fresh.lookup(1, 'plain').error, E.EIO);
    const init = fresh.init();
    assert.equal(init.major, 7);
    assert.equal(init.minor, 38);
    assert.equal(init.max_write, 1024 * 1024);
    assert.equal(init.max_pages, 256);
    assert.equal(init.max_readahead, 131072);
    assert.equal(init.time_gran, 1);
    assert.ok(init.flags & P.InitFlag.WRITEBACK_CACHE);
    assert.ok(init.flags & P.InitFlag.MAX_PAGES);
    assert.equal(init.flags & P.InitFlag.POSIX_LOCKS, 0);
    const ro = new GuestKernel(new FuseServer(served, { readOnly: true }));
    assert.equal(ro.init().flags & P.InitFlag.WRITEBACK_CACHE, 0, 'no writeback cache when read-only');
    // Only flags the kernel offered come back.
    const r = ro.call(P.Opcode.INIT, 0, P.InitIn.encode({ major: 7, minor: 31, flags: P.InitFlag.ASYNC_READ }));
    assert.equal(P.InitOut.decode(r.body).flags, P.InitFlag.ASYNC_READ);
    assert.equal(P.InitOut.decode(r.body).minor, 31);
    assert.equal(ro.call(P.Opcode.INIT, 0, P.InitIn.encode({ major: 7, minor: 20 })).error, E.EPROTO);
  });

  it('rejects names that are not one path component in every name-taking request', () => {
    const bad = ['', '.', '..', '../beyond', 'a/b', '/etc', 'x'.repeat(256)];
    const O = P.Opcode;
    for (const name of bad) {
      const n = cString(name);
      const expected = name.length > 255 ? E.ENAMETOOLONG : E.EINVAL;
      const results: Array<[string, number]> = [
        ['LOOKUP', kernel.lookup(1, name).error],
        ['CREATE', kernel.call(O.CREATE, 1, P.CreateIn.encode({ flags: fs.constants.O_WRONLY, mode: 0o644 }), n).error],
        ['MKDIR', kernel.call(O.MKDIR, 1, P.MkdirIn.encode({ mode: 0o755 }), n).error],
        ['MKNOD', kernel.call(O.MKNOD, 1, P.MknodIn.encode({ mode: fs.constants.S_IFREG | 0o644 }), n).error],
        ['SYMLINK', kernel.call(O.SYMLINK, 1, n, cString('target')).error],
        ['UNLINK', kernel.call(O.UNLINK, 1, n).error],
        ['RMDIR', kernel.call(O.RMDIR, 1, n).error],
        ['RENAME from', kernel.call(O.RENAME, 1, P.RenameIn.encode({ newdir: 1n }), n, cString('ok-name')).error],
        ['RENAME to', kernel.call(O.RENAME, 1, P.RenameIn.encode({ newdir: 1n }), cString('plain'), n).error],
        ['RENAME2 to', kernel.call(O.RENAME2, 1, P.Rename2In.encode({ newdir: 1n }), cString('plain'), n).error],
      ];
      const plain = kernel.lookup(1, 'plain');
      results.push(['LINK', kernel.call(O.LINK, 1, P.LinkIn.encode({ oldnodeid: plain.nodeid }), n).error]);
      for (const [op, error] of results) assert.equal(error, expected, `${op} ${JSON.stringify(name.slice(0, 20))}`);
    }
    assert.equal(fs.readFileSync(path.join(served, 'plain'), 'utf8'), 'plain');
  });

  it('returns host symlinks as symlinks and opens nothing through them', () => {
    const O = P.Opcode;
    const link = kernel.lookup(1, 'abs-link');
    assert.equal(link.error, 0);
    assert.equal(link.mode & fs.constants.S_IFMT, fs.constants.S_IFLNK);
    const target = kernel.call(O.READLINK, link.nodeid);
    assert.equal(target.body.toString(), path.join(beyond, 'secret'));
    for (const flags of [fs.constants.O_RDONLY, fs.constants.O_RDWR]) {
      const open = kernel.call(O.OPEN, link.nodeid, P.OpenIn.encode({ flags }));
      assert.notEqual(open.error, 0, 'OPEN of a symlink fails');
    }
    // Truncation and mode changes on a symlink's node must not reach its target.
    assert.notEqual(kernel.call(O.SETATTR, link.nodeid, P.SetattrIn.encode({ valid: P.SetattrValid.SIZE, size: 0n })).error, 0);
    assert.equal(kernel.call(O.SETATTR, link.nodeid, P.SetattrIn.encode({ valid: P.SetattrValid.MODE, mode: 0o777 })).error, E.EOPNOTSUPP);
    for (const name of ['dir-link', 'abs-dir-link']) {
      const dirLink = kernel.lookup(1, name);
      assert.equal(dirLink.mode & fs.constants.S_IFMT, fs.constants.S_IFLNK);
      assert.notEqual(kernel.lookup(dirLink.nodeid, 'secret').error, 0, `LOOKUP under ${name}`);
      assert.notEqual(kernel.call(O.OPENDIR, dirLink.nodeid, P.OpenIn.encode({})).error, 0, `OPENDIR ${name}`);
      assert.notEqual(kernel.call(O.CREATE, dirLink.nodeid, P.CreateIn.encode({ flags: fs.constants.O_WRONLY, mode: 0o644 }), cString('pwned')).error, 0);
      assert.notEqual(kernel.call(O.MKDIR, dirLink.nodeid, P.MkdirIn.encode({ mode: 0o755 }), cString('pwned')).error, 0);
      assert.notEqual(kernel.call(O.SYMLINK, dirLink.nodeid, cString('pwned'), cString('x')).error, 0);
      assert.notEqual(kernel.call(O.RENAME, 1, P.RenameIn.encode({ newdir: dirLink.nodeid }), cString('plain'), cString('pwned')).error, 0);
      assert.notEqual(kernel.call(O.UNLINK, dirLink.nodeid, cString('secret')).error, 0);
    }
    assert.equal(fs.readFileSync(path.join(served, 'plain'), 'utf8'), 'plain');
  });

  it('notices a directory swapped for a symlink on the host and refuses to go through it', () => {
    const O = P.Opcode;
    const swap = kernel.lookup(1, 'swap');
    const inner = kernel.lookup(swap.nodeid, 'inner');
    const secret = kernel.lookup(inner.nodeid, 'secret');
    assert.equal(secret.error, 0);
    fs.renameSync(path.join(served, 'swap'), path.join(served, 'swap-old'));
    fs.symlinkSync(beyond, path.join(served, 'swap'));
    try {
      assert.notEqual(kernel.lookup(swap.nodeid, 'secret').error, 0);
      assert.notEqual(kernel.lookup(inner.nodeid, 'secret').error, 0);
      assert.notEqual(kernel.call(O.GETATTR, secret.nodeid, P.GetattrIn.encode({})).error, 0);
      assert.notEqual(kernel.call(O.OPEN, secret.nodeid, P.OpenIn.encode({ flags: fs.constants.O_RDWR | fs.constants.O_TRUNC })).error, 0);
      assert.notEqual(kernel.call(O.CREATE, swap.nodeid, P.CreateIn.encode({ flags: fs.constants.O_WRONLY, mode: 0o644 }), cString('pwned')).error, 0);
      assert.notEqual(kernel.call(O.CREATE, inner.nodeid, P.CreateIn.encode({ flags: fs.constants.O_WRONLY, mode: 0o644 }), cString('pwned')).error, 0);
      assert.notEqual(kernel.call(O.SETATTR, secret.nodeid, P.SetattrIn.encode({ valid: P.SetattrValid.MODE, mode: 0o777 })).error, 0);
      assert.notEqual(kernel.call(O.UNLINK, inner.nodeid, cString('secret')).error, 0);
      assert.notEqual(kernel.call(O.OPENDIR, inner.nodeid, P.OpenIn.encode({})).error, 0);
    } finally {
      fs.unlinkSync(path.join(served, 'swap'));
      fs.renameSync(path.join(served, 'swap-old'), path.join(served, 'swap'));
    }
    // Back in place, the same node ids work again.
    assert.equal(kernel.call(O.GETATTR, secret.nodeid, P.GetattrIn.encode({})).error, 0);
  });

  it('refuses device nodes, sockets, RENAME_EXCHANGE; honours RENAME_NOREPLACE', () => {
    const O = P.Opcode;
    const { S_IFCHR, S_IFBLK, S_IFSOCK } = fs.constants;
    assert.equal(kernel.call(O.MKNOD, 1, P.MknodIn.encode({ mode: S_IFCHR | 0o666, rdev: (1 << 8) | 3 }), cString('null')).error, E.EPERM);
    assert.equal(kernel.call(O.MKNOD, 1, P.MknodIn.encode({ mode: S_IFBLK | 0o666, rdev: 8 << 8 }), cString('sda')).error, E.EPERM);
    assert.equal(kernel.call(O.MKNOD, 1, P.MknodIn.encode({ mode: S_IFSOCK | 0o666 }), cString('sock')).error, E.EOPNOTSUPP);
    assert.deepEqual(['null', 'sda', 'sock'].filter((n) => fs.existsSync(path.join(served, n))), []);
    fs.writeFileSync(path.join(served, 'other'), 'other');
    const exchange = kernel.call(O.RENAME2, 1, P.Rename2In.encode({ newdir: 1n, flags: P.RenameFlag.EXCHANGE }), cString('plain'), cString('other'));
    assert.equal(exchange.error, E.EINVAL);
    const noReplace = kernel.call(O.RENAME2, 1, P.Rename2In.encode({ newdir: 1n, flags: P.RenameFlag.NOREPLACE }), cString('plain'), cString('other'));
    assert.equal(noReplace.error, E.EEXIST);
    assert.equal(fs.readFileSync(path.join(served, 'other'), 'utf8'), 'other');
  });

  it('answers unknown node ids, unknown handles, unknown opcodes and short bodies with errors', () => {
    const O = P.Opcode;
    assert.equal(kernel.lookup(99999, 'plain').error, E.ESTALE);
    assert.equal(kernel.call(O.READ, 1, P.ReadIn.encode({ fh: 12345n, size: 10 })).error, E.EBADF);
    assert.equal(kernel.call(O.LSEEK, 1, P.LseekIn.encode({})).error, E.ENOSYS);
    assert.equal(kernel.call(O.GETXATTR, 1, Buffer.alloc(8), cString('user.x')).error, E.ENOSYS);
    assert.equal(kernel.call(999, 1).error, E.ENOSYS);
    assert.equal(kernel.call(O.SETATTR, 1, Buffer.alloc(10)).error, E.EINVAL);
    assert.equal(kernel.call(O.LOOKUP, 1, Buffer.from('no-terminator')).error, E.EINVAL);
    const mismatched = P.encodeRequest({ opcode: O.GETATTR, unique: 77n, nodeid: 1n }, P.GetattrIn.encode({}));
    mismatched.writeUInt32LE(mismatched.length + 8, 0);
    assert.equal(P.decodeReply(kernel.server.handle(mismatched)!).error, -E.EINVAL);
    assert.equal(kernel.server.handle(Buffer.alloc(10)), null, 'too short to answer');
    for (const opcode of [O.FORGET, O.BATCH_FORGET, O.INTERRUPT]) {
      assert.equal(kernel.server.handle(P.encodeRequest({ opcode, unique: 5n, nodeid: 1n }, Buffer.alloc(16))), null);
    }
  });

  it('survives random requests without throwing and without touching anything outside', () => {
    const fuzzRoot = path.join(served, 'fuzz');
    fs.mkdirSync(fuzzRoot);
    const fuzz = new GuestKernel(new FuseServer(fuzzRoot, { readOnly: false }));
    fuzz.init();
    let seed = 12345;
    const random = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const opcodes = Object.values(P.Opcode).filter((o) => o !== P.Opcode.INIT && o !== P.Opcode.DESTROY);
    for (let i = 0; i < 3000; i++) {
      const opcode = opcodes[random(opcodes.length)]!;
      const body = Buffer.alloc(random(120));
      for (let j = 0; j < body.length; j++) body[j] = random(4) === 0 ? 0 : 0x61 + random(4) + (random(16) === 0 ? -0x33 : 0); // names, NULs, some '.' and '/'
      if (random(3) === 0 && body.length >= 8) body.writeBigUInt64LE(BigInt(random(4)), 0); // plausible fh
      const request = P.encodeRequest({ opcode, unique: BigInt(i + 1), nodeid: BigInt(1 + random(6)) }, body);
      const reply = fuzz.server.handle(request);
      if (reply) assert.equal(P.decodeReply(reply).unique, BigInt(i + 1));
    }
    fuzz.server.close();
  });
});

describe('FuseServer protocol: node bookkeeping', () => {
  let dir: string;
  let kernel: GuestKernel;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-fuse-nodes-'));
    fs.writeFileSync(path.join(dir, 'a'), 'a');
    fs.linkSync(path.join(dir, 'a'), path.join(dir, 'b'));
    kernel = new GuestKernel(new FuseServer(dir, { readOnly: false }));
    kernel.init();
  });
  after(() => {
    kernel?.server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('gives two hard links one node id, and forgets a node after its last lookup', () => {
    const a = kernel.lookup(1, 'a');
    const b = kernel.lookup(1, 'b');
    assert.equal(a.nodeid, b.nodeid);
    // Two lookups held: one FORGET of 1 keeps it, the second drops it.
    kernel.server.handle(P.encodeRequest({ opcode: P.Opcode.FORGET, unique: 1000n, nodeid: a.nodeid }, P.ForgetIn.encode({ nlookup: 1n })));
    assert.equal(kernel.call(P.Opcode.GETATTR, a.nodeid, P.GetattrIn.encode({})).error, 0);
    const batch = Buffer.concat([P.BatchForgetIn.encode({ count: 1 }), P.ForgetOne.encode({ nodeid: a.nodeid, nlookup: 1n })]);
    kernel.server.handle(P.encodeRequest({ opcode: P.Opcode.BATCH_FORGET, unique: 1001n, nodeid: 0n }, batch));
    assert.equal(kernel.call(P.Opcode.GETATTR, a.nodeid, P.GetattrIn.encode({})).error, E.ESTALE);
    assert.notEqual(kernel.lookup(1, 'a').nodeid, a.nodeid, 'a new node id after forgetting');
  });

  it('lists with READDIR and READDIRPLUS from any offset', () => {
    for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(dir, `entry-${i}`), '');
    const open = kernel.call(P.Opcode.OPENDIR, 1, P.OpenIn.encode({}));
    const { fh } = P.OpenOut.decode(open.body);
    for (const [opcode, plus] of [[P.Opcode.READDIR, false], [P.Opcode.READDIRPLUS, true]] as const) {
      const names: string[] = [];
      let offset = 0n;
      for (;;) {
        const r = kernel.call(opcode, 1, P.ReadIn.encode({ fh, offset, size: 1024 }));
        assert.equal(r.error, 0);
        const entries = P.decodeDirents(r.body, plus);
        if (entries.length === 0) break;
        for (const e of entries) {
          names.push(e.name.toString());
          if (plus && !['.', '..'].includes(e.name.toString())) {
            assert.equal(e.entry!.attr.ino, e.ino);
            assert.notEqual(e.entry!.nodeid, 0n);
          }
        }
        offset = entries.at(-1)!.off;
      }
      assert.deepEqual(names.sort(), ['.', '..', 'a', 'b', ...Array.from({ length: 50 }, (_, i) => `entry-${i}`)].sort());
    }
    assert.equal(kernel.call(P.Opcode.RELEASEDIR, 1, P.ReleaseIn.encode({ fh })).error, 0);
  });
});

describe('FuseServer protocol: open handles are capped per VM', () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-fuse-handles-'));
    fs.writeFileSync(path.join(dir, 'f'), 'f');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const ownFds = (): number => fs.readdirSync('/proc/self/fd').length;
  const open = (k: GuestKernel, nodeid: bigint): { error: number; fh: bigint } => {
    const r = k.call(P.Opcode.OPEN, nodeid, P.OpenIn.encode({ flags: fs.constants.O_RDONLY }));
    return { error: r.error, fh: r.error ? 0n : P.OpenOut.decode(r.body).fh };
  };

  it('answers EMFILE to OPEN, CREATE and OPENDIR past the cap, holding no more host descriptors than the cap', () => {
    const kernel = new GuestKernel(new FuseServer(dir, { readOnly: false }));
    kernel.init();
    const f = kernel.lookup(1, 'f').nodeid;
    const before = ownFds();
    // A guest that opens and never releases: 5000 OPENs (the issue saw EMFILE of the whole
    // supervisor at 20,000).
    const fhs: bigint[] = [];
    let emfile = 0;
    for (let i = 0; i < 5000; i++) {
      const r = open(kernel, f);
      if (r.error === 0) fhs.push(r.fh);
      else if (r.error === E.EMFILE) emfile++;
      else assert.fail(`OPEN ${i}: errno ${r.error}`);
    }
    assert.equal(fhs.length, MAX_OPEN_HANDLES_PER_VM, 'exactly the cap was granted');
    assert.equal(emfile, 5000 - MAX_OPEN_HANDLES_PER_VM);
    assert.ok(ownFds() - before <= MAX_OPEN_HANDLES_PER_VM, `this process holds ${ownFds() - before} more descriptors`);
    // CREATE and OPENDIR are refused too, and CREATE makes no file before refusing.
    const create = kernel.call(P.Opcode.CREATE, 1, P.CreateIn.encode({ flags: fs.constants.O_WRONLY, mode: 0o644 }), cString('new'));
    assert.equal(create.error, E.EMFILE);
    assert.ok(!fs.existsSync(path.join(dir, 'new')), 'a refused CREATE created nothing');
    assert.equal(kernel.call(P.Opcode.OPENDIR, 1, P.OpenIn.encode({})).error, E.EMFILE);
    // The process itself can still open files (the supervisor's control socket, logs, ...).
    fs.closeSync(fs.openSync(path.join(dir, 'f'), 'r'));
    // A RELEASE gives a slot back; failed opens took none.
    assert.equal(kernel.call(P.Opcode.RELEASE, f, P.ReleaseIn.encode({ fh: fhs.pop()! })).error, 0);
    const again = open(kernel, f);
    assert.equal(again.error, 0);
    assert.equal(open(kernel, f).error, E.EMFILE);
    // An OPEN that fails for another reason gives its slot back.
    assert.equal(kernel.call(P.Opcode.RELEASE, f, P.ReleaseIn.encode({ fh: again.fh })).error, 0);
    assert.equal(kernel.call(P.Opcode.OPEN, 1, P.OpenIn.encode({ flags: fs.constants.O_RDONLY })).error, E.EISDIR);
    assert.equal(open(kernel, f).error, 0, 'the failed OPEN did not keep a slot');
    kernel.server.close();
    assert.ok(ownFds() - before <= 0, 'close() closed every handle');
  });

  it('shares one budget between the maps of a VM, and close() gives a server\'s handles back', () => {
    const budget = new HandleBudget(10);
    const a = new GuestKernel(new FuseServer(dir, { readOnly: false, handles: budget }));
    const b = new GuestKernel(new FuseServer(dir, { readOnly: false, handles: budget }));
    a.init();
    b.init();
    const fa = a.lookup(1, 'f').nodeid;
    const fb = b.lookup(1, 'f').nodeid;
    for (let i = 0; i < 6; i++) assert.equal(open(a, fa).error, 0);
    for (let i = 0; i < 4; i++) assert.equal(open(b, fb).error, 0);
    assert.equal(open(a, fa).error, E.EMFILE);
    assert.equal(open(b, fb).error, E.EMFILE);
    assert.equal(budget.inUse, 10);
    a.server.close();
    assert.equal(budget.inUse, 4);
    assert.equal(open(b, fb).error, 0);
    b.server.close();
    assert.equal(budget.inUse, 0);
  });
});
