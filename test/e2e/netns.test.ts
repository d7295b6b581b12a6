/**
 * `--network ns:PATH` (root), as a Kubernetes pod gets it: two network namespaces wired by the
 * real CNI plugins (Debian's containernetworking-plugins: bridge + host-local, called here as
 * containerd's CRI plugin calls them), a VM in the first. The VM answers at the pod's CNI
 * address from the host and from the other pod, has that address and MAC on its eth0, and
 * `shoal ls` shows it; after rm -f the namespace is as CNI left it (no TAP, no tc qdisc). Bad
 * namespace paths are one line and nothing started. The namespaces, the CNI bridge and its
 * address leases are the test's and go in `after`.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { NETNS_TAP } from '../../src/network/netns-attach';
import { busyboxImageForFile } from '../helpers/images';
import http from 'node:http';
import { ShoalSandbox, type LsEntry } from '../helpers/shoal-cli';

const CNI_PATH = '/usr/lib/cni';
const sandbox = new ShoalSandbox('netns');
const busybox = busyboxImageForFile();
const suffix = crypto.randomBytes(3).toString('hex');
const pods = [`shoal-test-pa${suffix}`, `shoal-test-pb${suffix}`];
const bridge = `shcni${suffix}`;
const subnetThird = 100 + (crypto.randomBytes(1)[0]! % 100);
const cniDir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-cni-'));
const conf = JSON.stringify({
  cniVersion: '0.4.0',
  name: `shoaltest${suffix}`,
  type: 'bridge',
  bridge,
  isGateway: true,
  ipMasq: false,
  ipam: { type: 'host-local', subnet: `10.98.${subnetThird}.0/24`, dataDir: path.join(cniDir, 'ipam') },
});
const podAddress: string[] = [];

function sh(command: string, args: string[]): string {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: 30_000 });
  if (result.status !== 0) throw new Error(`${command} ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

/** The bridge plugin, as the CRI plugin runs it: the config on stdin, the request in the environment. */
function cni(command: 'ADD' | 'DEL', pod: string): string {
  const result = spawnSync(path.join(CNI_PATH, 'bridge'), [], {
    input: conf,
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, CNI_COMMAND: command, CNI_CONTAINERID: pod, CNI_NETNS: `/run/netns/${pod}`, CNI_IFNAME: 'eth0', CNI_PATH },
  });
  if (result.status !== 0) throw new Error(`CNI ${command} for ${pod}: ${result.stdout}${result.stderr}`);
  return result.stdout;
}

function getBody(url: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 3000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { body += d; });
      res.on('end', () => resolve(body));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
  });
}

before(() => {
  for (const pod of pods) {
    sh('ip', ['netns', 'add', pod]);
    const added = JSON.parse(cni('ADD', pod)) as { ips: Array<{ address: string }> };
    podAddress.push(added.ips[0]!.address.split('/')[0]!);
  }
});

after(() => {
  sandbox.cleanup();
  for (const pod of pods) {
    try {
      cni('DEL', pod);
    } catch {
      // already gone
    }
    spawnSync('ip', ['netns', 'del', pod]);
  }
  spawnSync('ip', ['link', 'del', bridge]);
  fs.rmSync(cniDir, { recursive: true, force: true });
});

test('a VM in a CNI pod namespace answers at the pod address, from the host and from another pod; rm -f restores the namespace', async () => {
  const [podA] = pods;
  const [addressA] = podAddress;
  const macA = JSON.parse(sh('ip', ['-n', podA!, '-j', 'link', 'show', 'eth0']))[0].address as string;
  const run = await sandbox.run(['run', '-d', '--name', 'pod', '--network', `ns:/run/netns/${podA}`, busybox.ref, 'sh', '-c',
    'mkdir -p /w && echo pod-web > /w/index.html && exec httpd -f -p 8080 -h /w']);
  assert.equal(run.code, 0, run.stderr.toString());
  try {
    let body: string | undefined;
    const deadline = Date.now() + 60_000;
    while (body === undefined && Date.now() < deadline) {
      body = await getBody(`http://${addressA}:8080/`);
      if (body === undefined) await new Promise((r) => setTimeout(r, 500));
    }
    assert.equal(body, 'pod-web\n', 'the host reaches the pod address');
    const fetchCode = `require('http').get('http://${addressA}:8080/', { timeout: 10000 }, (r) => r.pipe(process.stdout)).on('error', (e) => { console.error(e.message); process.exit(1); })`;
    const fromPodB = spawnSync('ip', ['netns', 'exec', pods[1]!, process.execPath, '-e', fetchCode], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(fromPodB.stdout, 'pod-web\n', `the other pod reaches it: ${fromPodB.stderr}`);
    const eth0 = await sandbox.run(['exec', '--vm', 'pod', '--', 'ip', '-o', 'link', 'show', 'eth0'], { timeoutMs: 60_000 });
    assert.match(eth0.stdout.toString(), new RegExp(macA), 'the guest took the pod interface\'s MAC');
    const addr = await sandbox.run(['exec', '--vm', 'pod', '--', 'ip', '-4', '-o', 'addr', 'show', 'eth0'], { timeoutMs: 60_000 });
    assert.match(addr.stdout.toString(), new RegExp(`inet ${addressA!.replaceAll('.', '\\.')}/24`));
    const listed = (await sandbox.json<LsEntry[]>(['ls', '--json'])).find((v) => v.name === 'pod') as unknown as { network: { mode: string; guestAddress: string; netns: string } };
    assert.deepEqual(listed.network.mode, 'ns');
    assert.equal(listed.network.guestAddress, addressA);
    assert.equal(listed.network.netns, `/run/netns/${podA}`);
    // While the VM runs, the mirror is in place.
    assert.match(sh('tc', ['-n', podA!, 'qdisc', 'show', 'dev', 'eth0']), /ingress/);
  } finally {
    const rm = await sandbox.run(['rm', '-f', 'pod'], { timeoutMs: 60_000 });
    assert.equal(rm.code, 0, rm.stderr.toString());
  }
  assert.doesNotMatch(sh('tc', ['-n', podA!, 'qdisc', 'show', 'dev', 'eth0']), /ingress/, 'the mirror is gone');
  assert.equal(spawnSync('ip', ['-n', podA!, 'link', 'show', NETNS_TAP]).status, 1, 'the TAP is gone');
  assert.deepEqual(sandbox.processes(), []);
  assert.deepEqual(sandbox.leftovers(), []);
});

test('a bad namespace path is one line, exit non-zero, nothing started', async () => {
  for (const [value, pattern] of [
    ['ns:relative/path', /invalid --network "ns:relative\/path": the namespace path must be absolute/],
    ['ns:/run/netns/../x', /not a plain absolute path/],
    [`ns:/run/netns/shoal-test-none${suffix}`, /no network namespace at/],
    ['ns:/etc/hostname', /is not a network namespace/],
  ] as const) {
    const result = await sandbox.run(['run', '--rm', '--network', value, busybox.ref, 'true'], { timeoutMs: 120_000 });
    assert.notEqual(result.code, 0, value);
    const lines = result.stderr.toString().trim().split('\n').filter((l) => l.startsWith('shoal: '));
    assert.equal(lines.length, 1, `${value}: ${result.stderr.toString()}`);
    assert.match(lines[0]!, pattern);
  }
  const publish = await sandbox.run(['run', '--rm', '--network', `ns:/run/netns/${pods[0]}`, '-p', '8080:80', busybox.ref, 'true']);
  assert.notEqual(publish.code, 0);
  assert.match(publish.stderr.toString(), /--publish cannot be combined with --network ns:PATH/);
  assert.deepEqual(sandbox.processes(), []);
  assert.deepEqual(sandbox.leftovers(), []);
});

test('kill -9 of the supervisor of a VM in a pod namespace: ls shows it dead, rm -f gives the namespace back', async () => {
  const [podA] = pods;
  const run = await sandbox.run(['run', '-d', '--name', 'pod9', '--network', `ns:/run/netns/${podA}`, busybox.ref, 'sleep', '1000000']);
  assert.equal(run.code, 0, run.stderr.toString());
  const vm = await sandbox.vm('pod9');
  assert.ok(vm?.pid && vm.vmmPid, 'a live supervisor and VMM');
  process.kill(vm.pid, 'SIGKILL');
  const deadline = Date.now() + 30_000;
  while (fs.existsSync(`/proc/${vm.vmmPid}`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  assert.ok(!fs.existsSync(`/proc/${vm.vmmPid}`), 'the VMM died with its supervisor');
  assert.equal((await sandbox.vm('pod9'))?.state, 'dead');
  const rm = await sandbox.run(['rm', '-f', 'pod9'], { timeoutMs: 60_000 });
  assert.equal(rm.code, 0, rm.stderr.toString());
  assert.doesNotMatch(sh('tc', ['-n', podA!, 'qdisc', 'show', 'dev', 'eth0']), /ingress/, 'the mirror is gone');
  assert.equal(spawnSync('ip', ['-n', podA!, 'link', 'show', NETNS_TAP]).status, 1, 'the TAP is gone');
  assert.deepEqual(sandbox.processes(), []);
  assert.deepEqual(sandbox.leftovers(), []);
});
