/**
 * `--network slirp4netns`: the VM's TAP in a user+network namespace of its own, joined to
 * slirp4netns. This is how rootless Firecracker is networked; here QEMU is the VMM on the
 * same TAP (Firecracker cannot run on this machine), so the namespace, the TAP, slirp4netns,
 * its port forwards and the clean-up are all real.
 *
 * - published ports answer on loopback; by default the guest does not reach the host's loopback
 *   (slirp4netns --disable-host-loopback), neither over IPv4 nor IPv6; with
 *   `slirp4netns:allow_host_loopback=true` it does, over both; a proxy on the host's loopback
 *   without that option is refused in one line before anything starts;
 * - two clones of one snapshot, each in its own namespace with the same address inside, answer
 *   on their own ports with their own state;
 * - nothing is left after rm -f, nor after kill -9 of the supervisor: no namespace holder, no
 *   slirp4netns, no VMM, no listener;
 * - it needs no root: an unprivileged user runs a VM with a published port.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { busyboxImageForFile } from '../helpers/images';
import { freePort, httpGet } from '../helpers/http';
import { ShoalSandbox, waitUntil, type LsEntry } from '../helpers/shoal-cli';
import { isAlive, processStartTime } from '../../src/util/process';

const sandbox = new ShoalSandbox('s4n');
const busybox = busyboxImageForFile();

after(() => {
  sandbox.cleanup();
});

/** The supervisor's children: the namespace holder, slirp4netns and the VMM. */
function childrenOf(pid: number): Array<{ pid: number; command: string }> {
  const found: Array<{ pid: number; command: string }> = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) found.push({ pid: Number(entry), command: fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0')[0]! });
    } catch {
      // gone
    }
  }
  return found;
}

async function vmNamed(name: string): Promise<LsEntry> {
  const vm = await sandbox.vm(name);
  assert.ok(vm, `${name} is listed`);
  return vm;
}

/** A process seen earlier is gone: exited, reaped or a zombie (which holds no namespace or socket). */
function gone(p: { pid: number; startTime: string | undefined }): boolean {
  return !isAlive(p.pid, p.startTime);
}

/** The namespace's processes of a running VM, checked to be the three expected. */
function networkProcesses(vm: LsEntry): Array<{ pid: number; startTime: string | undefined }> {
  assert.ok(vm.pid, 'the VM has a supervisor');
  const children = childrenOf(vm.pid);
  const commands = children.map((c) => path.basename(c.command)).sort();
  assert.deepEqual(commands, ['qemu-system-x86_64', 'sleep', 'slirp4netns']);
  // The VMM runs in the namespace's network namespace, not the host's.
  const vmm = children.find((c) => c.command.endsWith('qemu-system-x86_64'))!;
  const holder = children.find((c) => c.command.endsWith('sleep'))!;
  assert.equal(fs.readlinkSync(`/proc/${vmm.pid}/ns/net`), fs.readlinkSync(`/proc/${holder.pid}/ns/net`));
  assert.notEqual(fs.readlinkSync(`/proc/${vmm.pid}/ns/net`), fs.readlinkSync('/proc/self/ns/net'));
  return children.map((c) => ({ pid: c.pid, startTime: processStartTime(c.pid) }));
}

test('published ports answer; the guest does not reach the host\'s loopback by default; rm -f leaves no namespace, slirp4netns or listener', async () => {
  let asked = 0;
  const server = http.createServer((_req, res) => { asked++; res.end('from-the-host\n'); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const server6 = http.createServer((req, res) => { asked++; res.end(`v6 client ${req.socket.remoteAddress}\n`); });
  await new Promise<void>((r) => server6.listen(0, '::1', r));
  const port = (server.address() as net.AddressInfo).port;
  const port6 = (server6.address() as net.AddressInfo).port;
  const [p1, p2] = [await freePort(), await freePort()];
  try {
    const script = [
      'mkdir -p /a /b',
      'echo served-by-8080 > /a/index.html',
      'echo served-by-8081 > /b/index.html',
      'httpd -p 8081 -h /b',
      'exec httpd -f -p 8080 -h /a',
    ].join(' && ');
    const run = await sandbox.run(['run', '-d', '--name', 'nsweb', '--network', 'slirp4netns', '-p', `127.0.0.1:${p1}:8080`, '-p', `127.0.0.1:${p2}:8081`, busybox.ref, 'sh', '-c', script]);
    assert.equal(run.code, 0, run.stderr.toString());
    let first: string | undefined;
    let second: string | undefined;
    await waitUntil('both published ports to answer', 60_000, async () => {
      first = await httpGet(p1);
      second = await httpGet(p2);
      return first !== undefined && second !== undefined;
    });
    assert.equal(first, 'served-by-8080\n');
    assert.equal(second, 'served-by-8081\n');

    // The host's loopback (127.0.0.1 as 10.0.2.2, ::1 as fd00::2) is not the guest's to reach.
    const outbound = await sandbox.run(['exec', 'nsweb', 'sh', '-c', [
      'ip -4 -o addr show eth0',
      `(wget -q -O - http://10.0.2.2:${port}/ || echo no-v4)`,
      'i=0; while ! ip -6 addr show eth0 | grep -q "inet6 fd00:"; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done',
      `(wget -q -O - "http://[fd00::2]:${port6}/" || echo no-v6)`,
    ].join(' && ')]);
    assert.equal(outbound.code, 0, outbound.stderr.toString());
    assert.match(outbound.stdout.toString(), /^\d+: eth0\s+inet 10\.0\.2\.100\/24 .*\nno-v4\nno-v6\n$/);
    assert.equal(asked, 0, 'no request reached the host\'s loopback');

    const vm = await vmNamed('nsweb');
    assert.deepEqual(vm.network, { mode: 'slirp4netns', guestAddress: '10.0.2.100', ports: [`127.0.0.1:${p1}->8080/tcp`, `127.0.0.1:${p2}->8081/tcp`] });
    const helpers = networkProcesses(vm);

    const rm = await sandbox.run(['rm', '-f', 'nsweb'], { timeoutMs: 60_000 });
    assert.equal(rm.code, 0, rm.stderr.toString());
    await waitUntil('the namespace holder, slirp4netns and the VMM to go', 5_000, () => helpers.every(gone));
    assert.deepEqual(sandbox.processes(), []);
    assert.equal(await httpGet(p1), undefined);
    assert.equal(await httpGet(p2), undefined);
  } finally {
    server.close();
    server6.close();
  }
});

test('two clones of one snapshot, each in its own namespace, answer on their own ports with their own state', async () => {
  const script = 'mkdir -p /a && echo source > /a/index.html && exec httpd -f -p 8080 -h /a';
  const run = await sandbox.run(['run', '-d', '--name', 'nsorigin', '--network', 'slirp4netns', busybox.ref, 'sh', '-c', script]);
  assert.equal(run.code, 0, run.stderr.toString());
  const snap = await sandbox.run(['snapshot', 'create', 'nsorigin', '--tag', 'nsweb']);
  assert.equal(snap.code, 0, snap.stderr.toString());
  const ports: number[] = [];
  for (const name of ['n1', 'n2']) {
    const port = await freePort();
    ports.push(port);
    const clone = await sandbox.run(['snapshot', 'run', '--snapshot', 'nsweb', '--name', name, '-p', `127.0.0.1:${port}:8080`]);
    assert.equal(clone.code, 0, clone.stderr.toString());
    const write = await sandbox.run(['exec', name, 'sh', '-c', `echo ${name} > /a/index.html`]);
    assert.equal(write.code, 0, write.stderr.toString());
  }
  for (const [i, name] of ['n1', 'n2'].entries()) {
    let body: string | undefined;
    await waitUntil(`${name} to answer`, 30_000, async () => (body = await httpGet(ports[i]!)) !== undefined);
    assert.equal(body, `${name}\n`);
    const vm = await vmNamed(name);
    assert.equal(vm.network.guestAddress, '10.0.2.100');
    networkProcesses(vm);
  }
  const rm = await sandbox.run(['rm', '-f', 'nsorigin', 'n1', 'n2'], { timeoutMs: 60_000 });
  assert.equal(rm.code, 0, rm.stderr.toString());
  assert.equal((await sandbox.run(['snapshot', 'rm', 'nsweb'])).code, 0);
  assert.deepEqual(sandbox.processes(), []);
});

test('with allow_host_loopback=true the guest reaches the host\'s loopback over IPv4 and IPv6; kill -9 of the supervisor takes the namespace, slirp4netns and the VMM with it', async () => {
  const port = await freePort();
  const server = http.createServer((_req, res) => res.end('from-the-host\n'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const server6 = http.createServer((req, res) => res.end(`v6 client ${req.socket.remoteAddress}\n`));
  await new Promise<void>((r) => server6.listen(0, '::1', r));
  const run = await sandbox.run(['run', '-d', '--name', 'nskill', '--network', 'slirp4netns:allow_host_loopback=true', '-p', `127.0.0.1:${port}:8080`, busybox.ref, 'sleep', '1000']);
  assert.equal(run.code, 0, run.stderr.toString());
  try {
    const outbound = await sandbox.run(['exec', 'nskill', 'sh', '-c', [
      `wget -q -O - http://10.0.2.2:${(server.address() as net.AddressInfo).port}/`,
      // slirp4netns advertises fd00::/64 and maps fd00::2 to the host's ::1 (after SLAAC's DAD).
      'i=0; while ! ip -6 addr show eth0 | grep -q "inet6 fd00:"; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done',
      `wget -q -O - "http://[fd00::2]:${(server6.address() as net.AddressInfo).port}/"`,
    ].join(' && ')]);
    assert.equal(outbound.code, 0, outbound.stderr.toString());
    assert.equal(outbound.stdout.toString(), 'from-the-host\nv6 client ::1\n');
  } finally {
    server.close();
    server6.close();
  }
  const vm = await vmNamed('nskill');
  assert.equal(vm.network.mode, 'slirp4netns');
  const helpers = networkProcesses(vm);
  process.kill(vm.pid!, 'SIGKILL');
  await waitUntil('the namespace holder, slirp4netns and the VMM to die', 10_000, () => helpers.every(gone));
  assert.equal((await vmNamed('nskill')).state, 'dead');
  // The forward went with slirp4netns: the port is free again.
  assert.equal(await httpGet(port), undefined);
  const rm = await sandbox.run(['rm', '-f', 'nskill']);
  assert.equal(rm.code, 0, rm.stderr.toString());
  assert.deepEqual(sandbox.leftovers(), []);
});

test('a proxy on the host\'s loopback without allow_host_loopback: one line, exit 125, nothing created', async () => {
  const before = sandbox.leftovers();
  const result = await sandbox.run(['run', '--rm', '--network', 'slirp4netns', busybox.ref, 'true'], { env: { http_proxy: 'http://127.0.0.1:3128' } });
  assert.equal(result.code, 125);
  assert.equal(result.stderr.toString(), 'shoal: http_proxy names a proxy on the host\'s loopback, which a --network slirp4netns guest cannot reach by default: use --network slirp4netns:allow_host_loopback=true to let the guest reach the host\'s loopback, or unset http_proxy\n');
  assert.deepEqual(sandbox.leftovers(), before);
});

test('without root: an unprivileged user runs a VM on slirp4netns with a published port, and the VMM runs as that user', { skip: process.getuid?.() !== 0 ? 'needs root to switch to an unprivileged user' : false }, async () => {
  const nobody = { uid: 65534, gid: 65534 };
  // udev makes /dev/net/tun mode 0666 on a Debian host; this machine has no udev.
  const tunMode = fs.statSync('/dev/net/tun').mode & 0o777;
  if ((tunMode & 0o006) !== 0o006) fs.chmodSync('/dev/net/tun', 0o666);
  const user = new ShoalSandbox('s4u', { user: nobody });
  const theirImages = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-images-'));
  try {
    fs.chownSync(theirImages, nobody.uid, nobody.gid);
    const archive = path.join(theirImages, 'busybox.tar');
    fs.copyFileSync(busybox.file, archive);
    fs.chownSync(archive, nobody.uid, nobody.gid);
    const port = await freePort();
    const run = await user.run(['run', '-d', '--name', 'mine', '--network', 'slirp4netns', '-p', `127.0.0.1:${port}:8080`, `docker-archive:${archive}`, 'sh', '-c',
      'mkdir -p /w && echo rootless > /w/index.html && exec httpd -f -p 8080 -h /w']);
    assert.equal(run.code, 0, run.stderr.toString());
    let body: string | undefined;
    await waitUntil('the published port to answer', 60_000, async () => (body = await httpGet(port)) !== undefined);
    assert.equal(body, 'rootless\n');
    const [vm] = await user.json<LsEntry[]>(['ls', '--json']);
    for (const pid of [vm!.pid!, vm!.vmmPid!]) {
      const uids = /^Uid:\s+(\d+)\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
      assert.deepEqual([Number(uids?.[1]), Number(uids?.[2])], [nobody.uid, nobody.uid], `process ${pid} runs as the user`);
    }
    const rm = await user.run(['rm', '-f', 'mine'], { timeoutMs: 60_000 });
    assert.equal(rm.code, 0, rm.stderr.toString());
    assert.deepEqual(user.processes(), []);
    assert.equal(await httpGet(port), undefined);
  } finally {
    user.cleanup();
    fs.rmSync(theirImages, { recursive: true, force: true });
    fs.chmodSync('/dev/net/tun', tunMode);
  }
});
