/**
 * Bridged networking (root): a VM on the shoal0 bridge reaches a server in a network namespace
 * this test creates, through NAT (the server sees the host's address, not the VM's); a published
 * port answers on loopback; after rm -f nothing of the VM is left: no TAP, no bridge port, no
 * address claim, no listener, no MAC/address binding; clones of a bridged VM take their own MAC and
 * address (and rm -f after kill -9 of one's supervisor releases its binding too). The namespace and its veth pair are the test's and go in `after`.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { BRIDGE, CLAIMS_DIR, tapName } from '../../src/network/bridge';
import { macFor } from '../../src/network/mode';
import { busyboxImageForFile } from '../helpers/images';
import { freePort, httpGet } from '../helpers/http';
import { ShoalSandbox, type LsEntry } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('bridge');
const busybox = busyboxImageForFile();
const suffix = crypto.randomBytes(3).toString('hex');
const namespace = `shoal-test-${suffix}`;
const hostVeth = `svh${suffix}`;
const nsVeth = `svn${suffix}`;
// A /30 of its own per run, so runs never collide.
const third = 100 + (crypto.randomBytes(1)[0]! % 100);
const hostSide = `10.99.${third}.1`;
const nsSide = `10.99.${third}.2`;
let server: ChildProcess | undefined;

function sh(command: string, args: string[]): string {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

before(async () => {
  sh('ip', ['netns', 'add', namespace]);
  sh('ip', ['link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', nsVeth]);
  sh('ip', ['link', 'set', nsVeth, 'netns', namespace]);
  sh('ip', ['addr', 'add', `${hostSide}/30`, 'dev', hostVeth]);
  sh('ip', ['link', 'set', hostVeth, 'up']);
  sh('ip', ['-n', namespace, 'addr', 'add', `${nsSide}/30`, 'dev', nsVeth]);
  sh('ip', ['-n', namespace, 'link', 'set', nsVeth, 'up']);
  sh('ip', ['-n', namespace, 'link', 'set', 'lo', 'up']);
  // A server that answers with the address it sees the client at.
  const code = `require('http').createServer((q, s) => s.end('client=' + q.socket.remoteAddress.replace('::ffff:', '') + '\\n')).listen(8080, '${nsSide}', () => console.log('listening'))`;
  server = spawn('ip', ['netns', 'exec', namespace, process.execPath, '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    server!.stdout!.once('data', () => resolve());
    server!.once('exit', (c) => reject(new Error(`the namespace server exited (${c})`)));
  });
});

after(() => {
  server?.kill('SIGKILL');
  sandbox.cleanup();
  spawnSync('ip', ['link', 'del', hostVeth]);
  spawnSync('ip', ['netns', 'del', namespace]);
});

test('a bridged VM reaches a server in a test namespace through NAT', async () => {
  const result = await sandbox.run(['run', '--rm', '--network', 'bridged', busybox.ref, 'sh', '-c',
    `ip -4 -o addr show eth0; wget -qO- http://${nsSide}:8080/`]);
  assert.equal(result.code, 0, result.stderr.toString());
  const out = result.stdout.toString();
  assert.match(out, /inet 10\.77\.0\.\d+\/24/);
  // Masqueraded: the namespace sees the host's side of its veth, not the VM's 10.77.0.x.
  assert.match(out, new RegExp(`client=${hostSide.replaceAll('.', '\\.')}\\n`));
});

test('a published port of a bridged VM answers on loopback; rm -f leaves no TAP, bridge port, claim or listener', async () => {
  const port = await freePort();
  const run = await sandbox.run(['run', '-d', '--name', 'bweb', '--network', 'bridged', '-p', `127.0.0.1:${port}:8080`, busybox.ref, 'sh', '-c',
    'mkdir -p /w && echo bridged-web > /w/index.html && exec httpd -f -p 8080 -h /w']);
  assert.equal(run.code, 0, run.stderr.toString());
  let body: string | undefined;
  const deadline = Date.now() + 60_000;
  while (!body && Date.now() < deadline) {
    body = await httpGet(port);
    if (!body) await new Promise((resolve) => setTimeout(resolve, 300));
  }
  assert.equal(body, 'bridged-web\n');

  const [vm] = await sandbox.json<LsEntry[]>(['ls', '--json']);
  const address = vm?.network?.guestAddress ?? '';
  assert.match(address, /^10\.77\.0\.\d+$/);
  const tap = tapName(vm!.id);
  assert.ok(fs.existsSync(`/sys/class/net/${BRIDGE}/brif/${tap}`), 'the TAP is a port of the bridge');
  assert.ok(fs.existsSync(path.join(CLAIMS_DIR, address)));
  // The TAP is bound to the VM's MAC and address (test/unit/port-binding.test.ts shows the rules at work).
  const binding = sh('nft', ['list', 'chain', 'bridge', 'shoal', `port_${tap}`]);
  assert.ok(binding.includes(`ether saddr != ${macFor(vm!.id)} drop comment "vm ${vm!.id}"`), binding);
  assert.ok(binding.includes(`arp saddr ether ${macFor(vm!.id)} arp saddr ip ${address} accept`), binding);
  assert.ok(binding.includes(`ip saddr ${address} accept`), binding);

  const rm = await sandbox.run(['rm', '-f', 'bweb']);
  assert.equal(rm.code, 0, rm.stderr.toString());
  assert.ok(!fs.existsSync(`/sys/class/net/${tap}`), 'the TAP is gone');
  assert.ok(!fs.existsSync(`/sys/class/net/${BRIDGE}/brif/${tap}`), 'the bridge port is gone');
  assert.ok(!fs.existsSync(path.join(CLAIMS_DIR, address)), 'the address claim is released');
  assert.equal(await httpGet(port), undefined);
  assert.deepEqual(sandbox.processes(), []);
  // The NAT rules are the shared table's only; nothing in it names this VM.
  assert.ok(!sh('nft', ['list', 'ruleset']).includes(tap));
});

test('bridged clones of one snapshot get their own address and MAC, reach out through NAT and answer on their own ports', async () => {
  const run = await sandbox.run(['run', '-d', '--name', 'borigin', '--network', 'bridged', busybox.ref, 'sh', '-c',
    'mkdir -p /w && echo source > /w/index.html && exec httpd -f -p 8080 -h /w']);
  assert.equal(run.code, 0, run.stderr.toString());
  const tag = `b-${suffix}`;
  const snap = await sandbox.run(['snapshot', 'create', 'borigin', '--tag', tag]);
  assert.equal(snap.code, 0, snap.stderr.toString());
  const identity = async (name: string): Promise<string> => {
    const shown = await sandbox.run(['exec', name, 'sh', '-c', 'cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | grep -o "inet [0-9./]*"']);
    assert.equal(shown.code, 0, shown.stderr.toString());
    return shown.stdout.toString();
  };
  const seen = new Set([await identity('borigin')]);
  const clones: Array<{ name: string; port: number; address: string; tap: string }> = [];
  for (const name of ['bc1', 'bc2']) {
    const port = await freePort();
    const clone = await sandbox.run(['snapshot', 'run', '--snapshot', tag, '--name', name, '-p', `127.0.0.1:${port}:8080`]);
    assert.equal(clone.code, 0, clone.stderr.toString());
    const vm = (await sandbox.vm(name))!;
    const address = vm.network.guestAddress ?? '';
    clones.push({ name, port, address, tap: tapName(vm.id) });
    // The agent applied the clone's own MAC and address before answering.
    const shown = await identity(name);
    assert.match(shown, new RegExp(`^02:fc:[0-9a-f:]{11}\ninet ${address.replaceAll('.', '\\.')}/24\n$`));
    assert.ok(!seen.has(shown), `${name} has an identity of its own`);
    seen.add(shown);
    const write = await sandbox.run(['exec', name, 'sh', '-c', `echo ${name} > /w/index.html && wget -qO- http://${nsSide}:8080/`]);
    assert.equal(write.code, 0, write.stderr.toString());
    assert.equal(write.stdout.toString(), `client=${hostSide}\n`);
  }
  for (const c of clones) {
    let body: string | undefined;
    const deadline = Date.now() + 30_000;
    while (!body && Date.now() < deadline) body = await httpGet(c.port);
    assert.equal(body, `${c.name}\n`);
    assert.ok(fs.existsSync(`/sys/class/net/${BRIDGE}/brif/${c.tap}`), `${c.name}'s TAP is a port of the bridge`);
  }
  // One clone's supervisor is killed -9 first: `rm -f` releases what it held, its binding too.
  const killed = (await sandbox.vm('bc2'))!;
  process.kill(killed.pid!, 'SIGKILL');
  const rm = await sandbox.run(['rm', '-f', 'borigin', 'bc1', 'bc2']);
  assert.equal(rm.code, 0, rm.stderr.toString());
  assert.equal((await sandbox.run(['snapshot', 'rm', tag])).code, 0);
  const ruleset = sh('nft', ['list', 'ruleset']);
  for (const c of clones) {
    assert.ok(!fs.existsSync(`/sys/class/net/${c.tap}`), `${c.name}'s TAP is gone`);
    assert.ok(!fs.existsSync(path.join(CLAIMS_DIR, c.address)), `${c.name}'s address claim is released`);
    assert.ok(!ruleset.includes(c.tap), `${c.name}'s binding is removed`);
  }
  assert.deepEqual(sandbox.processes(), []);
});
