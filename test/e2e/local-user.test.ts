/**
 * Another local user against a root VM: as uid 65534 (setpriv), nothing of it can be read,
 * written or connected to (records with `-e` values, guest RAM, scratch disk, logs, image-cache
 * snapshot files, control/QMP/agent sockets), and a file planted in advance (the guest RAM file
 * under /dev/shm) is refused, not used. Then names and tags that walk out of the state directory,
 * for every command that takes one: one line, exit 125, nothing outside touched.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { MEMORY_FILE_DIR } from '../../src/state/vm-files';
import { busyboxImageForFile } from '../helpers/images';
import { ShoalSandbox, waitUntil } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('local');
const image = busyboxImageForFile();
after(() => sandbox.cleanup());

const NOBODY = 65534;
const SECRET = `s3cr3t-${process.pid}-value`;

/**
 * Runs as uid/gid 65534: tries to open each path for reading and for writing, and to connect to
 * each socket. Prints the ones that worked.
 */
const PROBE = String.raw`
const fs = require('fs'); const net = require('net');
const paths = JSON.parse(process.argv[1]);
const got = [];
(async () => {
  for (const p of paths) {
    for (const flag of ['r', 'r+']) {
      try { fs.closeSync(fs.openSync(p, flag)); got.push(flag + ' ' + p); } catch {}
    }
    try { fs.readdirSync(p); got.push('list ' + p); } catch {}
    if (p.endsWith('.sock')) {
      await new Promise((resolve) => {
        const s = net.connect(p, () => { got.push('connect ' + p); s.destroy(); resolve(); });
        s.on('error', resolve);
      });
    }
  }
  process.stdout.write(JSON.stringify(got));
})();
`;

function asNobody(argv: string[]): { code: number | null; stdout: string; stderr: string } {
  const result = spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...argv], { timeout: 30_000 });
  return { code: result.status, stdout: result.stdout.toString(), stderr: result.stderr.toString() };
}

function everything(dir: string): string[] {
  const out: string[] = [dir];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...everything(full));
    else out.push(full);
  }
  return out;
}

describe('another local user', () => {
  test('cannot read, write or connect to anything of a root VM', async () => {
    // The first run saves the image cache (a snapshot with the guest's RAM and disk).
    const run = await sandbox.run(['run', '-d', '--name', 'secret', '-e', `SECRET=${SECRET}`, image.ref, '--', 'sh', '-c', 'echo "$SECRET"; sleep 3600'], { timeoutMs: 240_000 });
    assert.equal(run.code, 0, run.stderr.toString());
    const vm = await sandbox.vm('secret');
    assert.equal(vm?.state, 'running');
    await waitUntil('the container log', 30_000, () => {
      const log = path.join(sandbox.stateDir, 'vms', vm!.id, 'container.log');
      return fs.existsSync(log) && fs.readFileSync(log).includes(SECRET);
    });
    const ram = path.join(MEMORY_FILE_DIR, `shoal-${vm!.id}.ram`);
    const targets = [...everything(sandbox.stateDir), ram];
    // Sanity: the secret really is where a reader would look.
    assert.ok(fs.readFileSync(path.join(sandbox.stateDir, 'vms', vm!.id, 'state.json'), 'utf8').includes(SECRET));
    assert.ok(targets.some((t) => t.endsWith('ctl.sock')) && targets.some((t) => t.endsWith('memory.raw')) && targets.some((t) => t.endsWith('scratch.img')), targets.join('\n'));
    const probe = asNobody([process.execPath, '-e', PROBE, JSON.stringify(targets)]);
    assert.equal(probe.code, 0, probe.stderr);
    assert.deepEqual(JSON.parse(probe.stdout), [], 'what uid 65534 could open');
    // Modes: the state root is private, the RAM file 0600, and every socket sits in a 0700 directory.
    assert.equal(fs.statSync(sandbox.stateDir).mode & 0o777, 0o700);
    assert.equal(fs.statSync(ram).mode & 0o777, 0o600);
    assert.equal(fs.statSync(path.join(sandbox.stateDir, 'vms', vm!.id, 'ctl.sock')).mode & 0o077, 0);
    assert.equal(fs.statSync(path.join(sandbox.stateDir, 'vms', vm!.id)).mode & 0o777, 0o700);
    // Nor can they plant a name claim.
    const plant = asNobody(['sh', '-c', `echo 0123456789ab > ${sandbox.stateDir}/names/planted`]);
    assert.notEqual(plant.code, 0);
    const rm = await sandbox.run(['rm', '-f', 'secret'], { timeoutMs: 60_000 });
    assert.equal(rm.code, 0, rm.stderr.toString());
    assert.ok(!fs.existsSync(ram));
  });

  test('a guest RAM file planted in /dev/shm before the VM starts is refused, not used', async () => {
    const vmsDir = path.join(sandbox.stateDir, 'vms');
    const before = new Set(fs.existsSync(vmsDir) ? fs.readdirSync(vmsDir) : []);
    const running = sandbox.run(['run', '--rm', '--no-snapshot', '--name', 'planted', image.ref, '--', 'true'], { timeoutMs: 240_000 });
    // The id is visible to others in the supervisor's argv (ps); the test learns it from the state directory.
    let id = '';
    await waitUntil('the new VM id', 30_000, () => {
      id = (fs.existsSync(vmsDir) ? fs.readdirSync(vmsDir) : []).find((e) => !before.has(e)) ?? '';
      return id !== '';
    });
    const ram = path.join(MEMORY_FILE_DIR, `shoal-${id}.ram`);
    const plant = asNobody(['sh', '-c', `printf planted > ${ram}`]);
    assert.equal(plant.code, 0, plant.stderr);
    const result = await running;
    assert.equal(result.code, 125, result.stderr.toString());
    assert.match(result.stderr.toString(), /shoal-[0-9a-f]{12}\.ram exists already .*refusing to use it as guest memory/);
    assert.deepEqual(sandbox.processes(), []);
    if (fs.existsSync(ram)) assert.equal(fs.readFileSync(ram, 'utf8'), 'planted', 'never written by shoal');
    fs.rmSync(ram, { force: true });
    await sandbox.run(['rm', '-f', 'planted'], { timeoutMs: 60_000 });
  });
});

describe('another local user during shoal cp', () => {
  test('cannot enter or list the staging directory of a cp out of a VM, nor read what it holds', async () => {
    const run = await sandbox.run(['run', '-d', '--name', 'cpsrc', image.ref, '--', 'sleep', '3600'], { timeoutMs: 240_000 });
    assert.equal(run.code, 0, run.stderr.toString());
    const made = await sandbox.run(['exec', 'cpsrc', '--', 'sh', '-c', 'mkdir /d && chmod 0777 /d && dd if=/dev/zero of=/d/big bs=1M count=128 2>/dev/null && chmod 0666 /d/big'], { timeoutMs: 120_000 });
    assert.equal(made.code, 0, made.stderr.toString());
    // A destination others can reach: a plain 0755 directory, as in any home or /srv.
    const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-cp-dest-'));
    fs.chmodSync(parent, 0o755);
    try {
      const cp = sandbox.start(['cp', 'cpsrc:/d', path.join(parent, 'd')], { timeoutMs: 240_000 });
      let staging = '';
      await waitUntil('cp to be mid-transfer', 120_000, () => {
        staging = fs.readdirSync(parent).find((n) => n.startsWith('.shoal-cp-')) ?? '';
        const big = staging && path.join(parent, staging, 'd', 'big');
        return big !== '' && fs.existsSync(big) && fs.statSync(big).size > 1024 * 1024;
      });
      const dir = path.join(parent, staging);
      const list = asNobody(['ls', '-a', dir]);
      const enter = asNobody([process.execPath, '-e', 'try { process.chdir(process.argv[1]); } catch (e) { console.error(e.code === "EACCES" ? "Permission denied" : e.code); process.exit(1); }', dir]);
      const read = asNobody(['cat', path.join(dir, 'd', 'big')]);
      const result = await cp.result;
      assert.equal(result.code, 0, result.stderr.toString());
      for (const [what, r] of [['list', list], ['enter', enter], ['read', read]] as const) {
        assert.notEqual(r.code, 0, `uid ${NOBODY} could ${what} the staging directory`);
        assert.match(r.stderr, /Permission denied/i, `${what}: ${r.stderr}`);
      }
      // The copy itself lands with its own modes.
      assert.equal(fs.statSync(path.join(parent, 'd')).mode & 0o777, 0o777);
      assert.equal(fs.statSync(path.join(parent, 'd', 'big')).size, 128 * 1024 * 1024);
    } finally {
      fs.rmSync(parent, { recursive: true, force: true });
      await sandbox.run(['rm', '-f', 'cpsrc'], { timeoutMs: 60_000 });
    }
  });
});

describe('names and tags that walk out of the state directory', () => {
  const outside = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-outside-'));
  after(() => fs.rmSync(outside, { recursive: true, force: true }));
  const rel = path.relative(path.join(sandbox.stateDir, 'names'), outside);
  const cases: Array<{ what: string; args: string[]; error: RegExp }> = [
    { what: 'rm -f', args: ['rm', '-f', rel], error: /invalid VM name or id: / },
    { what: 'stop', args: ['stop', '../x'], error: /invalid VM name or id: / },
    { what: 'exec', args: ['exec', '../../x', '--', 'true'], error: /invalid VM name or id: / },
    { what: 'logs', args: ['logs', '../vms'], error: /invalid VM name or id: / },
    { what: 'logs --console', args: ['logs', '--console', '..'], error: /invalid VM name or id: / },
    { what: 'snapshot create (name)', args: ['snapshot', 'create', '../x', '--tag', 't'], error: /invalid VM name or id: / },
    { what: 'snapshot create (tag)', args: ['snapshot', 'create', 'x', '--tag', '../t'], error: /invalid --tag|tag "\.\.\/t" must match/ },
    { what: 'snapshot rm', args: ['snapshot', 'rm', '../../x'], error: /invalid snapshot tag: / },
    { what: 'snapshot run', args: ['snapshot', 'run', '--snapshot', '../x'], error: /invalid snapshot tag: / },
    { what: 'snapshot serve', args: ['snapshot', 'serve', '../x'], error: /invalid snapshot tag: / },
    { what: 'fork (name)', args: ['fork', '../x', '-n', '1'], error: /invalid VM name or id: / },
    { what: 'run --name', args: ['run', '--name', '../x', image.ref], error: /invalid --name/ },
  ];
  for (const c of cases) {
    test(`${c.what}: one line, exit 125, nothing touched`, async () => {
      fs.writeFileSync(path.join(outside, 'state.json'), '{"id":"0123456789ab"}');
      const before = sandbox.leftovers();
      const result = await sandbox.run(c.args, { timeoutMs: 30_000 });
      const stderr = result.stderr.toString();
      assert.equal(result.code, 125, stderr);
      assert.match(stderr, /^shoal: /);
      assert.match(stderr, c.error);
      assert.equal(stderr.trimEnd().split('\n').length, 1, stderr);
      assert.deepEqual(sandbox.leftovers(), before);
      assert.ok(fs.existsSync(path.join(outside, 'state.json')), 'the directory outside is untouched');
    });
  }

  test('a claim planted with an id that walks out is not followed by rm -f', async () => {
    fs.mkdirSync(path.join(sandbox.stateDir, 'names'), { recursive: true, mode: 0o700 });
    fs.writeFileSync(path.join(outside, 'state.json'), '{"id":"0123456789ab","supervisorPid":1}');
    fs.writeFileSync(path.join(sandbox.stateDir, 'names', 'evil'), path.relative(path.join(sandbox.stateDir, 'vms'), outside));
    const result = await sandbox.run(['rm', '-f', 'evil'], { timeoutMs: 30_000 });
    assert.equal(result.code, 125);
    assert.equal(result.stderr.toString().trim(), 'shoal: no such VM: evil');
    assert.ok(fs.existsSync(path.join(outside, 'state.json')));
    fs.rmSync(path.join(sandbox.stateDir, 'names', 'evil'));
  });
});
