/**
 * podman's everyday flags and verbs, end to end, lean: one long-lived VM (`run -d` with several
 * container flags) serves most cases through exec, cp, inspect and stop -t; two short runs cover
 * what needs its own container (--privileged, --read-only with --user, wait's exit code).
 * Bad input is checked first: no VM may appear.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildBusyboxDockerArchive } from '../helpers/images';
import { ShoalSandbox } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('parity');
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-parity-'));
let image = '';
const envFile = path.join(work, 'app.env');
const tree = path.join(work, 'tree');
const BIG = 20 * 1024 * 1024 + 7;
// Ignores SIGTERM: only SIGKILL (stop -t) ends it.
const STUBBORN = 'trap "" TERM; while :; do sleep 1; done';

before(async () => {
  image = `docker-archive:${await buildBusyboxDockerArchive(path.join(work, 'busybox.tar'))}`;
  fs.writeFileSync(envFile, '# a comment\n\n   # an indented comment\nFOO=bar\nQUOTED="hello world"\nSPACED=a b \nFROM_HOST\n');
  fs.mkdirSync(path.join(tree, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'a.txt'), 'alpha\n');
  fs.chmodSync(path.join(tree, 'a.txt'), 0o640);
  fs.writeFileSync(path.join(tree, 'sub', 'run.sh'), '#!/bin/sh\n');
  fs.chmodSync(path.join(tree, 'sub', 'run.sh'), 0o755);
  fs.symlinkSync('a.txt', path.join(tree, 'link'));
  fs.writeFileSync(path.join(tree, 'big'), crypto.randomBytes(BIG));
  fs.utimesSync(path.join(tree, 'a.txt'), 981173106, 981173106);
});

after(() => {
  sandbox.cleanup();
  fs.rmSync(work, { recursive: true, force: true });
});

function sha256(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

async function shoal(args: string[], timeoutMs = 60_000): Promise<{ code: number | null; out: string; err: string }> {
  const r = await sandbox.run(args, { timeoutMs, env: { FROM_HOST: 'host-value' } });
  return { code: r.code, out: r.stdout.toString(), err: r.stderr.toString() };
}

describe('podman parity', () => {
  test('bad input: one line, exit 125, no VM', async () => {
    const cases: [string[], RegExp][] = [
      [['run', '-w', 'tmp', image, 'true'], /--workdir "tmp": must be an absolute path/],
      [['run', '--cap-add', 'NOT_A_CAP', image, 'true'], /--cap-add "NOT_A_CAP": unknown capability/],
      [['run', '--user', 'a:b:c', image, 'true'], /invalid --user/],
      [['run', '--env-file', path.join(work, 'missing.env'), image, 'true'], /missing\.env: no such file/],
      [['run', '--stop-timeout', 'soon', image, 'true'], /invalid --stop-timeout/],
      [['run', '--hostname', 'bad host', image, 'true'], /invalid --hostname/],
    ];
    fs.writeFileSync(path.join(work, 'bad.env'), 'OK=1\n# fine\nNOT OK=2\n');
    cases.push([['run', '--env-file', path.join(work, 'bad.env'), image, 'true'], /bad\.env line 3: "NOT OK" is not a variable name/]);
    for (const [args, message] of cases) {
      const r = await shoal(args);
      assert.equal(r.code, 125, `${args.join(' ')}: ${r.err}`);
      assert.match(r.err, message);
      assert.equal(r.err.trim().split('\n').length, 1, r.err);
    }
    assert.deepEqual(sandbox.vmNames(), []);
  });

  test('run -d with --user, --env-file, -w, --entrypoint, --hostname, --label: exec, cp, inspect, stop -t', async () => {
    const started = await shoal([
      'run', '-d', '--name', 'pp', '--no-snapshot', '--user', '1000:1000', '--env-file', envFile, '-w', '/tmp', '--hostname', 'pp-host',
      '--label', 'team=blue', '--stop-timeout', '60', '--entrypoint', '["sh","-c"]', image, STUBBORN,
    ], 240_000);
    assert.equal(started.code, 0, started.err);

    const pwd = await shoal(['exec', 'pp', 'sh', '-c', 'id -u; pwd']);
    assert.equal(pwd.out, '1000\n/tmp\n', pwd.err);
    const env = await shoal(['exec', 'pp', 'env']);
    assert.match(env.out, /^FOO=bar$/m);
    assert.match(env.out, /^QUOTED="hello world"$/m); // podman keeps quotes literally
    assert.match(env.out, /^SPACED=a b $/m);
    assert.match(env.out, /^FROM_HOST=host-value$/m);
    const host = await shoal(['exec', 'pp', 'hostname']);
    assert.equal(host.out, 'pp-host\n');
    const ps = await shoal(['exec', 'pp', 'cat', '/proc/1/cmdline']);
    assert.equal(ps.out.split('\0').slice(0, 2).join(' '), 'sh -c'); // the entrypoint runs the command
    // The default container is not privileged: mknod is refused, even to root.
    const mknod = await shoal(['exec', '--user', '0', 'pp', 'busybox', 'mknod', '/tmp/null2', 'c', '1', '3']);
    assert.notEqual(mknod.code, 0, 'mknod worked without --privileged');
    const user = await shoal(['exec', '--user', '0:0', '-w', '/', 'pp', 'sh', '-c', 'id -u; id -g; pwd']);
    assert.equal(user.out, '0\n0\n/\n', user.err);
    fs.writeFileSync(path.join(work, 'exec.env'), 'X=from-file\n');
    const execEnv = await shoal(['exec', '--env-file', path.join(work, 'exec.env'), 'pp', 'sh', '-c', 'echo $X']);
    assert.equal(execEnv.out, 'from-file\n');

    // cp round trip: a tree with a symlink, modes, an mtime and a 20 MiB file.
    const into = await shoal(['cp', tree, 'pp:/tmp/'], 120_000);
    assert.equal(into.code, 0, into.err);
    const seen = await shoal(['exec', 'pp', 'sh', '-c', 'cd /tmp/tree && readlink link && stat -c "%a %Y" a.txt && stat -c %a sub/run.sh && sha256sum big | cut -d" " -f1']);
    assert.equal(seen.out, `a.txt\n640 981173106\n755\n${sha256(path.join(tree, 'big'))}\n`, seen.err);
    const back = path.join(work, 'back');
    fs.mkdirSync(back);
    const out = await shoal(['cp', 'pp:/tmp/tree', back], 120_000);
    assert.equal(out.code, 0, out.err);
    assert.equal(fs.readlinkSync(path.join(back, 'tree', 'link')), 'a.txt');
    assert.equal(fs.statSync(path.join(back, 'tree', 'a.txt')).mode & 0o7777, 0o640);
    assert.equal(fs.statSync(path.join(back, 'tree', 'a.txt')).mtimeMs, 981173106000);
    assert.equal(fs.statSync(path.join(back, 'tree', 'sub', 'run.sh')).mode & 0o7777, 0o755);
    assert.equal(sha256(path.join(back, 'tree', 'big')), sha256(path.join(tree, 'big')));
    assert.deepEqual(fs.readdirSync(back), ['tree']); // no staging directory left
    // One file to a new name.
    const renamed = await shoal(['cp', 'pp:/tmp/tree/a.txt', path.join(work, 'alpha.txt')]);
    assert.equal(renamed.code, 0, renamed.err);
    assert.equal(fs.readFileSync(path.join(work, 'alpha.txt'), 'utf8'), 'alpha\n');
    const missing = await shoal(['cp', 'pp:/tmp/nope', back]);
    assert.equal(missing.code, 125);
    assert.match(missing.err, /^shoal: cp: .*nope.*no such file or directory/im);
    const outside = await shoal(['cp', 'pp:/../etc/passwd', back]);
    assert.equal(outside.code, 125);
    assert.match(outside.err, /outside the container/);

    const [doc] = JSON.parse((await shoal(['inspect', 'pp'])).out) as Array<Record<string, any>>;
    assert.equal(doc!.name, 'pp');
    assert.equal(doc!.state, 'running');
    assert.deepEqual(doc!.record.config.container, { user: '1000:1000', workdir: '/tmp', entrypoint: ['sh', '-c'], hostname: 'pp-host', labels: { team: 'blue' }, stopTimeout: 60 });
    assert.equal(doc!.container.Config.Labels.team, 'blue');
    assert.equal(doc!.container.Config.WorkingDir, '/tmp');
    assert.equal(doc!.container.Config.StopTimeout, 60);

    // The container ignores SIGTERM and asked for 60 s; stop -t 1 kills it after one.
    const t0 = Date.now();
    const stopped = await shoal(['stop', '-t', '1', 'pp'], 90_000);
    assert.equal(stopped.code, 0, stopped.err);
    assert.ok(Date.now() - t0 < 40_000, `stop -t 1 took ${Date.now() - t0} ms`);
    const stoppedCp = await shoal(['cp', tree, 'pp:/tmp/']);
    assert.equal(stoppedCp.code, 125);
    assert.match(stoppedCp.err, /VM pp is stopped, not running/);
    await shoal(['rm', 'pp']);
  });

  test('--privileged allows mknod', async () => {
    const r = await shoal(['run', '--rm', '--no-snapshot', '--privileged', image, 'sh', '-c', 'busybox mknod /tmp/null2 c 1 3 && echo made'], 240_000);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, 'made\n');
  });

  test('--read-only refuses a write to /; wait prints the exit code', async () => {
    const started = await shoal(['run', '-d', '--name', 'ro', '--no-snapshot', '--read-only', image,
      'sh', '-c', 'id -u; if touch /x 2>/dev/null; then echo wrote; else echo refused; fi; sleep 2; exit 7'], 240_000);
    assert.equal(started.code, 0, started.err);
    const waited = await shoal(['wait', 'ro'], 120_000);
    assert.equal(waited.code, 0, waited.err);
    assert.equal(waited.out, '7\n');
    const logs = await shoal(['logs', 'ro']);
    assert.equal(logs.out, '0\nrefused\n');
    await shoal(['rm', 'ro']);
  });
});
