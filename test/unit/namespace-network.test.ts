/**
 * The slirp4netns attachment without a guest: a real user+network namespace with its bridge and
 * TAP, a real slirp4netns with its port forwards, and the Firecracker backend starting its
 * (spec-validating fake) VMM inside that namespace, where it finds the TAP by name. The same
 * namespace under a real guest is test/e2e/slirp4netns.test.ts.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';
import { NAMESPACE_TAP, slirpApi, startNamespaceNetwork } from '../../src/network/namespace-network';
import { enterNamespacesArgv, isAlive, processStartTime } from '../../src/util/process';
import { FirecrackerBackend } from '../../src/vmm/firecracker/backend';
import type { VmSpec } from '../../src/vmm/backend';
import { writeFakeBinary, type Exchange } from '../helpers/firecracker-fake';
import { freePort } from '../helpers/http';

let dir: string;

before(() => {
  dir = fs.mkdtempSync(path.join('/tmp', 'nsn-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function inNamespace(pid: number, command: string[]): string {
  const [nsenter, ...args] = enterNamespacesArgv(pid);
  return execFileSync(nsenter!, [...args, ...command], { encoding: 'utf8' });
}

test('the namespace has the VMM\'s TAP and slirp4netns\'s on one bridge; forwards listen on the host; close leaves nothing', async () => {
  const port = await freePort();
  const runDir = fs.mkdtempSync(path.join(dir, 'a-'));
  const netns = await startNamespaceNetwork({ runDir, forwards: [{ proto: 'tcp', hostAddress: '127.0.0.1', hostPort: port, guestPort: 80 }] });
  const holder = netns.holderPid;
  const holderStart = processStartTime(holder);
  try {
    assert.notEqual(fs.readlinkSync(`/proc/${holder}/ns/net`), fs.readlinkSync('/proc/self/ns/net'));
    assert.notEqual(fs.readlinkSync(`/proc/${holder}/ns/user`), fs.readlinkSync('/proc/self/ns/user'));
    const links = inNamespace(holder, ['ip', '-o', 'link', 'show']);
    assert.match(links, new RegExp(`: ${NAMESPACE_TAP}: .* master br0 `));
    assert.match(links, /: s0: .* master br0 .*state UNKNOWN/);
    // No address in the namespace: it is only a wire between the VMM and slirp4netns.
    assert.equal(inNamespace(holder, ['ip', '-4', '-o', 'addr', 'show', 'dev', 'br0']), '');
    // The forward is slirp4netns's listener on the host.
    const list = await slirpApi(path.join(runDir, 'slirp.sock'), { execute: 'list_hostfwd' });
    assert.deepEqual((list as { entries: Array<Record<string, unknown>> }).entries.map((e) => [e.proto, e.host_port, e.guest_addr, e.guest_port]), [['tcp', port, '10.0.2.100', 80]]);
    await new Promise<void>((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => { socket.destroy(); resolve(); });
      socket.once('error', reject);
    });
  } finally {
    await netns.close();
  }
  assert.equal(isAlive(holder, holderStart), false);
  assert.equal(fs.existsSync(path.join(runDir, 'slirp.sock')) && (await slirpApi(path.join(runDir, 'slirp.sock'), { execute: 'list_hostfwd' }, 1000).then(() => true, () => false)), false);
  await new Promise<void>((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => server.close(() => resolve()));
  });
});

test('a forward slirp4netns refuses is a one-line error, and nothing is left running', async () => {
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  const port = (taken.address() as net.AddressInfo).port;
  const before = fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e)).length;
  try {
    await assert.rejects(
      startNamespaceNetwork({ runDir: fs.mkdtempSync(path.join(dir, 'b-')), forwards: [{ proto: 'tcp', hostAddress: '127.0.0.1', hostPort: port, guestPort: 80 }] }),
      (err: Error) => err.message.startsWith(`cannot publish 127.0.0.1:${port}/tcp: `) && !err.message.includes('\n'),
    );
  } finally {
    taken.close();
  }
  // The holder and slirp4netns were stopped (allow for unrelated processes coming and going).
  const after = fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e)).length;
  assert.ok(after <= before + 2, `${after - before} more processes than before`);
});

test('Firecracker boots and restores inside the namespace, opening the TAP by its in-namespace name', async () => {
  const bin = writeFakeBinary(path.join(dir, 'bin'));
  for (const f of ['vmlinux', 'rootfs.ext4', 'scratch.img']) fs.writeFileSync(path.join(dir, f), 'x');
  const record = path.join(dir, 'rec.jsonl');
  process.env.FAKE_FC_RECORD = record;
  const exchanges = (): Exchange[] => fs.readFileSync(record, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Exchange);
  const backend = new FirecrackerBackend({ binary: bin, startTimeoutMs: 5000 });
  const first = await startNamespaceNetwork({ runDir: fs.mkdtempSync(path.join(dir, 'c-')), forwards: [] });
  const second = await startNamespaceNetwork({ runDir: fs.mkdtempSync(path.join(dir, 'd-')), forwards: [] });
  try {
    const spec: VmSpec = {
      id: 'nsfc00000001',
      runDir: path.join(dir, 'nsfc00000001'),
      kernel: path.join(dir, 'vmlinux'),
      cmdline: 'console=ttyS0',
      cpus: 1,
      memoryMiB: 128,
      drives: [{ id: 'root', path: path.join(dir, 'rootfs.ext4'), readOnly: true }, { id: 'scratch', path: path.join(dir, 'scratch.img'), readOnly: false }],
      net: { tap: NAMESPACE_TAP, mac: '02:fc:00:00:00:09', namespacePid: first.holderPid },
      accel: 'kvm',
      consoleLog: path.join(dir, 'nsfc00000001', 'console.log'),
    };
    const vm = await backend.boot(spec);
    const exec = exchanges().find((e) => e.method === 'EXEC')!;
    assert.equal(exec.netns, fs.readlinkSync(`/proc/${first.holderPid}/ns/net`));
    assert.ok(exec.netDevices?.includes(NAMESPACE_TAP), `the VMM sees ${NAMESPACE_TAP}: ${exec.netDevices?.join(',')}`);
    const nic = exchanges().find((e) => e.method === 'PUT' && e.path === '/network-interfaces/eth0')!;
    assert.deepEqual(nic.body, { iface_id: 'eth0', host_dev_name: NAMESPACE_TAP, guest_mac: '02:fc:00:00:00:09' });
    await vm.pause();
    const files = { stateFile: path.join(dir, 'ns.state'), memoryFile: path.join(dir, 'ns.mem') };
    await vm.snapshot(files, 'full');
    vm.kill();
    await vm.exited;

    // A clone in a namespace of its own: the same TAP name there, so the load needs no network override.
    fs.rmSync(record);
    const clone = await backend.restore({
      id: 'nsfc00000002',
      runDir: path.join(dir, 'nsfc00000002'),
      snapshot: files,
      memory: { kind: 'file', path: files.memoryFile },
      source: spec,
      drives: spec.drives,
      net: { ...spec.net!, namespacePid: second.holderPid },
      consoleLog: path.join(dir, 'nsfc00000002', 'console.log'),
    });
    const cloneExec = exchanges().find((e) => e.method === 'EXEC')!;
    assert.equal(cloneExec.netns, fs.readlinkSync(`/proc/${second.holderPid}/ns/net`));
    const load = exchanges().find((e) => e.method === 'PUT' && e.path === '/snapshot/load')!;
    assert.equal((load.body as Record<string, unknown>).network_overrides, undefined);
    for (const e of exchanges()) assert.deepEqual(e.problems, [], `off-spec: ${e.method} ${e.path}`);
    clone.kill();
    await clone.exited;
  } finally {
    await first.close();
    await second.close();
    delete process.env.FAKE_FC_RECORD;
  }
});

test('the host\'s loopback is out of the namespace\'s reach by default, and reachable as 10.0.2.2 with allowHostLoopback', async () => {
  const server = net.createServer((s) => s.end('from-the-host-loopback'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  // From inside the namespace, as a guest would: an address of slirp's subnet on the bridge.
  const probe = async (holder: number): Promise<string> => {
    inNamespace(holder, ['ip', 'addr', 'add', '10.0.2.100/24', 'dev', 'br0']);
    const script = `const s=require('net').connect(${port},'10.0.2.2');let got='';s.on('data',d=>got+=d);` +
      `s.on('end',()=>{console.log('got '+got);process.exit(0)});s.on('error',e=>{console.log('error '+e.code);process.exit(0)});` +
      `setTimeout(()=>{console.log('timeout');process.exit(0)},3000);`;
    // Asynchronously: the listener is in this process and must be free to answer.
    const [nsenter, ...args] = enterNamespacesArgv(holder);
    const { stdout } = await promisify(execFile)(nsenter!, [...args, process.execPath, '-e', script], { encoding: 'utf8' });
    return stdout.trim();
  };
  const closed = await startNamespaceNetwork({ runDir: fs.mkdtempSync(path.join(dir, 'e-')), forwards: [] });
  const open = await startNamespaceNetwork({ runDir: fs.mkdtempSync(path.join(dir, 'f-')), forwards: [], allowHostLoopback: true });
  try {
    // slirp4netns answers with an ICMP unreachable: the connection never reaches the host.
    assert.match(await probe(closed.holderPid), /^error (ENETUNREACH|EHOSTUNREACH|ECONNREFUSED)$|^timeout$/);
    assert.equal(await probe(open.holderPid), 'got from-the-host-loopback');
  } finally {
    await closed.close();
    await open.close();
    server.close();
  }
});
