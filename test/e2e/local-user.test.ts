/**
 * Another local user against a root VM: as uid 65534 (setpriv), nothing of it can be read,
 * written or connected to (records with `-e` values, guest RAM, scratch disk, logs, image-cache
 * snapshot files, control/QMP/agent sockets), and a file planted in advance (the guest RAM file
 * under /dev/shm) is refused, not used. Then names and tags that walk out of the state directory,
 * for every command that takes one: one line, exit 125, nothing outside touched.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { MEMORY_FILE_DIR } from '../../src/state/vm-files';
import { busyboxImageForFile } from '../helpers/images';
import { SHOAL_BIN, ShoalSandbox, waitUntil } from '../helpers/shoal-cli';

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

/**
 * Runs as uid 65534 until SIGTERM: reads every /proc/PID/cmdline every 10 ms and reports any
 * that holds one of the secrets (given in its environment, which others cannot read).
 */
const CMDLINE_SCANNER = String.raw`
const fs = require('fs');
const secrets = JSON.parse(process.env.SECRETS);
const hits = new Set();
let scans = 0;
const scan = () => {
  for (const p of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(p) || p === String(process.pid)) continue;
    let c;
    try { c = fs.readFileSync('/proc/' + p + '/cmdline'); } catch { continue; }
    for (const s of secrets) if (c.includes(s)) hits.add(p + ': ' + c.toString().replace(/\0/g, ' ').slice(0, 300));
  }
  scans += 1;
};
const timer = setInterval(scan, 10);
process.on('SIGTERM', () => { clearInterval(timer); process.stdout.write(JSON.stringify({ scans, hits: [...hits] })); process.exit(0); });
`;

describe('secrets in the environment', () => {
  test('no env value is in any command line (API create and exec, CLI run -e KEY), and the container sees it', { timeout: 900_000 }, async () => {
    const apiSecret = `api-${SECRET}`;
    const execSecret = `exec-${SECRET}`;
    const cliSecret = `cli-${SECRET}`;
    const scanner = spawn('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, '-e', CMDLINE_SCANNER], {
      env: { PATH: process.env.PATH, SECRETS: JSON.stringify([apiSecret, execSecret, cliSecret]) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let scanned = '';
    scanner.stdout!.on('data', (d: Buffer) => { scanned += d.toString(); });
    const scannerDone = new Promise<void>((resolve) => scanner.once('close', () => resolve()));
    const serve = spawn(SHOAL_BIN, ['serve', '--listen', '127.0.0.1:0', '--image-dir', path.dirname(image.file)], { env: sandbox.env(), stdio: ['ignore', 'pipe', 'pipe'] });
    serve.stderr!.on('data', () => undefined);
    const logHas = (name: string, text: string) => async (): Promise<boolean> => {
      const vm = await sandbox.vm(name);
      const log = vm ? path.join(sandbox.stateDir, 'vms', vm.id, 'container.log') : '';
      return log !== '' && fs.existsSync(log) && fs.readFileSync(log).includes(text);
    };
    try {
      const line = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('shoal serve did not start')), 20_000);
        serve.stdout!.once('data', (d: Buffer) => { clearTimeout(timer); resolve(d.toString()); });
      });
      const started = JSON.parse(line) as { url: string; tokenFile: string };
      const headers = { authorization: `Bearer ${fs.readFileSync(started.tokenFile, 'utf8').trim()}`, 'content-type': 'application/json' };
      const created = await fetch(`${started.url}/v1/sandboxes`, {
        method: 'POST', headers, signal: AbortSignal.timeout(300_000),
        body: JSON.stringify({ name: 'apisecret', image: image.ref, memoryMiB: 512, env: { API_SECRET: apiSecret }, cmd: ['sh', '-c', 'echo "api:$API_SECRET"; sleep 3600'] }),
      });
      const body = await created.text();
      assert.equal(created.status, 201, body);
      const id = (JSON.parse(body) as { sandboxId: string }).sandboxId;
      await waitUntil('the API container printed its variable', 60_000, logHas('apisecret', `api:${apiSecret}`));
      // cwd makes it a podman exec (not the agent's direct entry): podman gets --env KEY bare.
      const exec = await fetch(`${started.url}/v1/sandboxes/${id}/exec`, {
        method: 'POST', headers, signal: AbortSignal.timeout(120_000),
        body: JSON.stringify({ cmd: 'echo "exec:$EXEC_SECRET"', env: { EXEC_SECRET: execSecret }, cwd: '/' }),
      });
      const ran = await exec.text();
      assert.equal(exec.status, 200, ran);
      assert.equal((JSON.parse(ran) as { stdout: string }).stdout, `exec:${execSecret}\n`);
      assert.equal((await fetch(`${started.url}/v1/sandboxes/${id}`, { method: 'DELETE', headers: { authorization: headers.authorization } })).status, 204);
      // The CLI: -e KEY takes the value from its environment, so not even its own argv holds it.
      const run = await sandbox.run(['run', '-d', '--name', 'clisecret', '-e', 'CLI_SECRET', image.ref, '--', 'sh', '-c', 'echo "cli:$CLI_SECRET"; sleep 3600'], { env: { CLI_SECRET: cliSecret }, timeoutMs: 300_000 });
      assert.equal(run.code, 0, run.stderr.toString());
      await waitUntil('the CLI container printed its variable', 60_000, logHas('clisecret', `cli:${cliSecret}`));
    } finally {
      serve.kill('SIGTERM');
      scanner.kill('SIGTERM');
      await scannerDone;
      await sandbox.run(['rm', '-f', 'apisecret', 'clisecret'], { timeoutMs: 60_000 });
    }
    const report = JSON.parse(scanned) as { scans: number; hits: string[] };
    assert.ok(report.scans > 100, `the scanner ran (${report.scans} scans)`);
    assert.deepEqual(report.hits, [], 'command lines holding a secret');
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
