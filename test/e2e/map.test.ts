/**
 * `--map` end to end: host directories in a container over FUSE, served by the supervisor on the
 * host. POSIX cases run in a real guest's container, each with its expected result written down;
 * escapes must fail; data must be on the host byte for byte, also after `kill -9` of the
 * container; a `:ro` map refuses writes on the host side, even with the guest's mount made rw.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildBusyboxDockerArchive } from '../helpers/images';
import { ShoalSandbox } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('map');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-map-'));
const mapped = path.join(work, 'mapped');
const readOnly = path.join(work, 'readonly');
const secret = path.join(work, 'secret.txt');
const SECRET = `secret-${crypto.randomBytes(8).toString('hex')}`;
let image = '';

/**
 * The POSIX cases, in the order they run in the container (in /m, the mapped directory). Each
 * snippet exits 0 exactly when the file system behaved as POSIX says.
 */
const POSIX_CASES: [name: string, snippet: string][] = [
  ['create and read', 'echo hello > f1 && [ "$(cat f1)" = hello ]'],
  ['overwrite in place', 'printf abcdef > f2 && printf XY | dd of=f2 bs=1 seek=2 conv=notrunc 2>/dev/null && [ "$(cat f2)" = abXYef ]'],
  ['append', 'echo a > f3 && echo b >> f3 && [ "$(cat f3)" = "$(printf \'a\\nb\')" ]'],
  ['truncate shorter and longer', 'printf 123456 > f4 && truncate -s 2 f4 && [ "$(cat f4)" = 12 ] && truncate -s 10 f4 && [ "$(stat -c %s f4)" = 10 ]'],
  ['rename', 'echo r > r1 && mv r1 r2 && [ ! -e r1 ] && [ "$(cat r2)" = r ]'],
  ['rename over an existing file', 'echo new > a1 && echo old > a2 && mv -f a1 a2 && [ "$(cat a2)" = new ] && [ ! -e a1 ]'],
  ['unlink', 'echo x > u1 && rm u1 && [ ! -e u1 ]'],
  ['unlink of an open file keeps its data readable', 'echo kept > u2 && exec 3< u2 && rm u2 && [ "$(cat <&3)" = kept ] && exec 3<&-'],
  ['mkdir and rmdir', 'mkdir d1 && [ -d d1 ] && rmdir d1 && [ ! -e d1 ]'],
  ['rmdir of a non-empty directory fails', 'mkdir d2 && touch d2/x && ! rmdir d2 2>/dev/null && [ -e d2/x ]'],
  ['symlink and readlink', 'ln -s f1 s1 && [ "$(readlink s1)" = f1 ] && [ "$(cat s1)" = hello ]'],
  ['hard link shares the inode', 'ln f1 h1 && [ "$(stat -c %h f1)" = 2 ] && [ "$(stat -c %i f1)" = "$(stat -c %i h1)" ] && echo more >> h1 && grep -q more f1'],
  ['chmod', 'touch c1 && chmod 640 c1 && [ "$(stat -c %a c1)" = 640 ]'],
  ['chown', 'touch o1 && chown 1234:5678 o1 && [ "$(stat -c %u:%g o1)" = 1234:5678 ]'],
  ['timestamps', 'touch -d "2001-02-03 04:05:06" t1 && [ "$(stat -c %Y t1)" = 981173106 ]'],
  ['fsync', 'dd if=/dev/zero of=fs1 bs=4k count=4 conv=fsync 2>/dev/null && [ "$(stat -c %s fs1)" = 16384 ]'],
  ['large file, written', 'dd if=/dev/urandom of=big bs=1M count=48 2>/dev/null && [ "$(stat -c %s big)" = 50331648 ] && echo "bigsum=$(sha256sum big | cut -d" " -f1)"'],
  ['large file, read', 'echo "hostbigsum=$(sha256sum hostbig | cut -d" " -f1)"'],
  ['sparse file', 'truncate -s 1G sparse && [ "$(stat -c %s sparse)" = 1073741824 ] && [ "$(du -k sparse | cut -f1)" -lt 1024 ] && printf z | dd of=sparse bs=1 seek=536870912 conv=notrunc 2>/dev/null && [ "$(dd if=sparse bs=1 skip=536870912 count=1 2>/dev/null)" = z ]'],
  ['concurrent writers', '(for i in $(seq 1 150); do echo "A$i" >> cw; done) & (for i in $(seq 1 150); do echo "B$i" >> cw; done) & wait; [ "$(wc -l < cw)" = 300 ] && [ "$(grep -c A cw)" = 150 ]'],
  ['a directory of 1000 entries', 'mkdir many && (cd many && for i in $(seq 1 1000); do : > "f$i"; done) && [ "$(ls many | wc -l)" = 1000 ] && [ -e many/f1000 ]'],
  ['rename of a directory moves its contents', 'mkdir -p dm/sub && echo deep > dm/sub/x && mv dm dn && [ "$(cat dn/sub/x)" = deep ] && [ ! -e dm ]'],
  // Escapes: each must fail, or show only the guest's own files.
  ['escape: .. stays in the container', '! cat /m/../secret.txt 2>/dev/null'],
  ['escape: host symlink with an absolute target is not followed on the host', `! grep -q ${SECRET} out-absolute 2>/dev/null`],
  ['escape: host symlink with a ../ target is not followed on the host', `! grep -q ${SECRET} out-relative 2>/dev/null`],
  ['escape: a guest symlink to / resolves in the guest', `ln -s / groot && ! grep -rqs ${SECRET} groot${work} 2>/dev/null`],
  ['escape: a hard link to a file outside fails', '! ln /etc/hostname pw 2>/dev/null'],
];

before(async () => {
  image = `docker-archive:${await buildBusyboxDockerArchive(path.join(work, 'busybox.tar'))}`;
  fs.mkdirSync(mapped);
  fs.mkdirSync(readOnly);
  fs.writeFileSync(secret, SECRET);
  fs.writeFileSync(path.join(mapped, 'hostbig'), crypto.randomBytes(16 * 1024 * 1024 + 123));
  fs.symlinkSync(secret, path.join(mapped, 'out-absolute'));
  fs.symlinkSync('../secret.txt', path.join(mapped, 'out-relative'));
  fs.writeFileSync(path.join(readOnly, 'keep.txt'), 'read me\n');
  fs.chmodSync(path.join(readOnly, 'keep.txt'), 0o644);
});

after(() => {
  sandbox.cleanup();
  fs.rmSync(work, { recursive: true, force: true });
});

function sha256(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Everything about a directory tree a write would change: names, modes, sizes, contents. */
function treeState(dir: string): string {
  const lines: string[] = [];
  const walk = (d: string): void => {
    for (const name of fs.readdirSync(d).sort()) {
      const full = path.join(d, name);
      const st = fs.lstatSync(full);
      lines.push(`${path.relative(dir, full)} ${st.mode.toString(8)} ${st.size} ${st.mtimeMs} ${st.isFile() ? sha256(full) : ''}`);
      if (st.isDirectory()) walk(full);
    }
  };
  walk(dir);
  return lines.join('\n');
}

describe('shoal run --map', () => {
  test('POSIX cases pass in the container; escapes fail; the data is on the host byte for byte', async () => {
    const runner = POSIX_CASES.map(([name, snippet], i) =>
      `cd /m && if ( ${snippet} ) > /tmp/case${i} 2>&1; then echo "ok ${i} $(grep sum= /tmp/case${i})"; else echo "FAIL ${i} ${name}: $(head -c 300 /tmp/case${i})"; fi`,
    ).join('\n');
    const roBefore = treeState(readOnly);
    const outsideBefore = fs.readdirSync(work).sort();
    const result = await sandbox.run(['run', '--rm', '--map', `${mapped}:/m`, '--map', `${readOnly}:/ro:ro`, image, 'sh', '-c', runner], { timeoutMs: 600_000 });
    assert.equal(result.code, 0, result.stderr.toString());
    const out = result.stdout.toString();
    const failures = out.split('\n').filter((l) => l.startsWith('FAIL'));
    assert.deepEqual(failures, [], out);
    for (let i = 0; i < POSIX_CASES.length; i++) assert.match(out, new RegExp(`^ok ${i}\\b`, 'm'), `case ${POSIX_CASES[i]![0]} did not report`);

    // What the guest wrote and read, compared on the host.
    assert.equal(/bigsum=([0-9a-f]{64})/.exec(out)?.[1], sha256(path.join(mapped, 'big')));
    assert.equal(/hostbigsum=([0-9a-f]{64})/.exec(out)?.[1], sha256(path.join(mapped, 'hostbig')));
    assert.equal(fs.readFileSync(path.join(mapped, 'f1'), 'utf8'), 'hello\nmore\n');
    assert.equal(fs.readFileSync(path.join(mapped, 'a2'), 'utf8'), 'new\n');
    assert.equal(fs.readlinkSync(path.join(mapped, 's1')), 'f1');
    assert.equal(fs.statSync(path.join(mapped, 'c1')).mode & 0o777, 0o640);
    assert.equal(fs.statSync(path.join(mapped, 'o1')).uid, 1234);
    assert.equal(fs.statSync(path.join(mapped, 't1')).mtimeMs, 981173106000);
    assert.equal(fs.statSync(path.join(mapped, 'sparse')).size, 1073741824);
    assert.equal(fs.readdirSync(path.join(mapped, 'many')).length, 1000);
    assert.equal(fs.readFileSync(path.join(mapped, 'cw'), 'utf8').split('\n').filter(Boolean).length, 300);
    // Nothing outside the mapped directories changed on the host.
    assert.equal(fs.readFileSync(secret, 'utf8'), SECRET);
    assert.deepEqual(fs.readdirSync(work).sort(), outsideBefore);
    assert.equal(treeState(readOnly), roBefore);
  });

  test(':ro is enforced on the host: no write gets through, even with the guest mount made rw', async () => {
    const before = treeState(readOnly);
    const started = await sandbox.run(['run', '-d', '--name', 'ro', '--map', `${readOnly}:/ro:ro`, image, 'sleep', '1000']);
    assert.equal(started.code, 0, started.stderr.toString());
    const read = await sandbox.run(['exec', 'ro', '--', 'cat', '/ro/keep.txt']);
    assert.equal(read.stdout.toString(), 'read me\n');
    const attempts = [
      'echo x > /ro/new.txt',
      'echo x >> /ro/keep.txt',
      'rm /ro/keep.txt',
      'chmod 777 /ro/keep.txt',
      'touch /ro/keep.txt',
      'mkdir /ro/dir',
      'mv /ro/keep.txt /ro/moved.txt',
      'truncate -s 0 /ro/keep.txt',
    ];
    for (const attempt of attempts) {
      const inContainer = await sandbox.run(['exec', 'ro', '--', 'sh', '-c', attempt]);
      assert.notEqual(inContainer.code, 0, `in the container: ${attempt} succeeded`);
    }
    // The guest is root in its VM: it can lift its own mount flag. The host still says no.
    const mountpoint = '/run/shoal/maps/0';
    const remount = await sandbox.run(['exec', '--vm', 'ro', '--', 'mount', '-o', 'remount,rw', mountpoint]);
    assert.equal(remount.code, 0, remount.stderr.toString());
    for (const attempt of attempts) {
      const inVm = await sandbox.run(['exec', '--vm', 'ro', '--', 'sh', '-c', attempt.replaceAll('/ro/', `${mountpoint}/`)]);
      assert.notEqual(inVm.code, 0, `in the guest OS after remount: ${attempt} succeeded`);
      assert.match(inVm.stderr.toString(), /Read-only file system/, attempt);
    }
    assert.equal(treeState(readOnly), before);
    const rm = await sandbox.run(['rm', '-f', 'ro']);
    assert.equal(rm.code, 0, rm.stderr.toString());
  });

  test('fsync\'d data survives kill -9 of the container; nothing is left mounted or running', async () => {
    const target = path.join(mapped, 'killed');
    const started = await sandbox.run(['run', '-d', '--name', 'k9', '--map', `${mapped}:/m`, image, 'sh', '-c',
      'dd if=/dev/urandom of=/m/killed bs=64k count=16 conv=fsync 2>/dev/null && sha256sum /m/killed > /tmp/sum && touch /tmp/done && sleep 1000']);
    assert.equal(started.code, 0, started.stderr.toString());
    let sum = '';
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      const probe = await sandbox.run(['exec', 'k9', '--', 'sh', '-c', 'test -e /tmp/done && cat /tmp/sum']);
      if (probe.code === 0) {
        sum = probe.stdout.toString().split(' ')[0]!;
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    assert.match(sum, /^[0-9a-f]{64}$/);
    const kill = await sandbox.run(['exec', '--vm', 'k9', '--', 'podman', 'kill', '--signal', 'KILL', 'main']);
    assert.equal(kill.code, 0, kill.stderr.toString());
    assert.equal(sha256(target), sum);
    const rm = await sandbox.run(['rm', '-f', 'k9']);
    assert.equal(rm.code, 0, rm.stderr.toString());
    assert.deepEqual(sandbox.processes(), []);
    assert.ok(!fs.readFileSync('/proc/self/mounts', 'utf8').includes(sandbox.stateDir));
  });

  test('bad --map input is a one-line error and starts nothing', async () => {
    const cases: [string, RegExp][] = [
      [`${work}/nope:/m`, /does not exist/],
      [`${secret}:/m`, /is not a directory/],
      [`${mapped}:relative`, /must be absolute/],
      [`${mapped}:/m:rx`, /expected HOST:GUEST\[:ro\]/],
      [`${mapped}:/`, /cannot map over \//],
    ];
    for (const [spec, message] of cases) {
      const result = await sandbox.run(['run', '--rm', '--map', spec, image, 'true']);
      assert.notEqual(result.code, 0, spec);
      const lines = result.stderr.toString().trim().split('\n');
      assert.equal(lines.length, 1, result.stderr.toString());
      assert.match(lines[0]!, message);
    }
    assert.deepEqual(sandbox.vmNames(), []);
  });
});
