import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { attachmentFor, checkNetworkSupport, guestAddress, macFor, netSpecFor, parseNetwork, parseNetworkMode, reachesHostLoopback } from '../../src/network/mode';
import { checkNetworkIdentity } from '../../src/agent/network-identity';
import { assertPortsFree, forwardsForChild, parsePublish } from '../../src/network/publish';
import { claimAddress, createTap, releaseAddress, removeOrphanTaps, removeTap, tapName } from '../../src/network/bridge';
import { loopbackProxyProblem, proxyEnvironment } from '../../src/network/proxy-env';

test('--publish accepts podman forms', () => {
  assert.deepEqual(parsePublish(['8080:80', '127.0.0.1:5353:53/udp,9000:9000/tcp', '[::1]:8443:443']), [
    { proto: 'tcp', hostAddress: '0.0.0.0', hostPort: 8080, guestPort: 80 },
    { proto: 'udp', hostAddress: '127.0.0.1', hostPort: 5353, guestPort: 53 },
    { proto: 'tcp', hostAddress: '0.0.0.0', hostPort: 9000, guestPort: 9000 },
    { proto: 'tcp', hostAddress: '::1', hostPort: 8443, guestPort: 443 },
  ]);
});

test('--publish rejects malformed specs with a message naming the problem', () => {
  assert.throws(() => parsePublish(['80']), /expected \[ADDR:\]HOST:GUEST/);
  assert.throws(() => parsePublish(['0:80']), /port 0 is out of range/);
  assert.throws(() => parsePublish(['8080:70000']), /port 70000 is out of range/);
  assert.throws(() => parsePublish(['8080:80/sctp']), /protocol must be tcp or udp/);
  assert.throws(() => parsePublish(['host:8080:80']), /"host" is not an IP address/);
  assert.throws(() => parsePublish(['8080:80', '8080:81']), /host port 8080\/tcp twice/);
});

test('a host port in use is refused before anything starts', async () => {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  try {
    await assert.rejects(assertPortsFree(parsePublish([`127.0.0.1:${port}:80`])), new RegExp(`cannot publish 127.0.0.1:${port}/tcp: the port is already in use`));
  } finally {
    server.close();
  }
  await assertPortsFree(parsePublish([`127.0.0.1:${port}:80`]));
});

test('network modes', () => {
  assert.equal(parseNetworkMode('rootless'), 'rootless');
  assert.throws(() => parseNetworkMode('host'), /invalid --network "host"/);
  assert.throws(() => checkNetworkSupport('none', 'qemu', parsePublish(['1:1'])), /cannot be combined with --network none/);
  assert.match(macFor('abc'), /^02:fc(:[0-9a-f]{2}){4}$/);
  assert.equal(macFor('abc'), macFor('abc'));
});

test('proxy settings reach the guest; a proxy on the host loopback is named as the guest reaches it', () => {
  const env = {
    http_proxy: 'http://127.0.0.1:3128',
    HTTPS_PROXY: 'http://user:pw@localhost:8080/',
    ftp_proxy: 'http://proxy.example:21',
    no_proxy: 'localhost,127.0.0.1',
    PATH: '/bin',
  };
  assert.deepEqual(proxyEnvironment(env, '10.0.2.2'), {
    http_proxy: 'http://10.0.2.2:3128',
    HTTPS_PROXY: 'http://user:pw@10.0.2.2:8080/',
    ftp_proxy: 'http://proxy.example:21',
    no_proxy: 'localhost,127.0.0.1',
  });
  assert.equal(proxyEnvironment(env, null).http_proxy, 'http://127.0.0.1:3128');
  assert.deepEqual(proxyEnvironment({ PATH: '/bin' }, '10.0.2.2'), {});
});

test('bridged addresses: claimed once each, released, and taken over from a dead holder', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-claims-'));
  try {
    const a = claimAddress('vm-a', process.pid, dir);
    const b = claimAddress('vm-b', process.pid, dir);
    assert.equal(a, '10.77.0.2');
    assert.equal(b, '10.77.0.3');
    assert.equal(claimAddress('vm-a', process.pid, dir), a, 'a VM asking again keeps its address');
    releaseAddress('vm-a', a, dir);
    assert.equal(claimAddress('vm-c', process.pid, dir), a, 'a released address is free again');
    // A holder whose process is gone: its claim is stale.
    const dead = spawnSync('true').pid!;
    fs.writeFileSync(path.join(dir, '10.77.0.4'), JSON.stringify({ id: 'vm-dead', pid: dead, startTime: '1' }));
    assert.equal(claimAddress('vm-d', process.pid, dir), '10.77.0.4');
    releaseAddress('vm-x', b, dir);
    assert.ok(fs.existsSync(path.join(dir, b)), 'only the holder releases');
    assert.equal(tapName('0123456789abcdef').length <= 15, true);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('network modes: how each backend attaches them, and what is refused', () => {
  assert.equal(attachmentFor('rootless', 'qemu'), 'qemu-slirp');
  assert.equal(attachmentFor('rootless', 'firecracker'), 'namespace');
  assert.equal(attachmentFor('slirp4netns', 'qemu'), 'namespace');
  assert.equal(attachmentFor('bridged', 'firecracker'), 'bridge');
  assert.equal(attachmentFor('none', 'firecracker'), 'none');
  assert.equal(parseNetworkMode('slirp4netns'), 'slirp4netns');
  if (process.getuid?.() === 0) {
    assert.doesNotThrow(() => checkNetworkSupport('bridged', 'qemu', []));
    assert.doesNotThrow(() => checkNetworkSupport('bridged', 'firecracker', [], { jailer: true }));
  }
  // The jailer's uid is not mapped in the namespace: the one-line error names the way out.
  assert.throws(() => checkNetworkSupport('rootless', 'firecracker', [], { jailer: true }), /--jailer cannot be combined with --network rootless: use --network bridged/);
  assert.doesNotThrow(() => checkNetworkSupport('rootless', 'qemu', [], { jailer: false }));
  assert.deepEqual(netSpecFor('namespace', 'abc', []), { mac: macFor('abc'), tap: 'tap0' });
  assert.equal(guestAddress('namespace'), '10.0.2.100');
  assert.equal(guestAddress('qemu-slirp'), '10.0.2.15');
});

test('a bridged clone\'s new identity is checked before the agent applies it (over netlink, see native-guest.test.ts)', () => {
  assert.doesNotThrow(() => checkNetworkIdentity({ mac: '02:fc:01:02:03:04', address: '10.77.0.9/24', gateway: '10.77.0.1' }));
  assert.throws(() => checkNetworkIdentity({ mac: '02:fc:01:02:03:04; reboot', address: '10.77.0.9/24', gateway: '10.77.0.1' }), /refusing/);
  assert.throws(() => checkNetworkIdentity({ mac: '02:fc:01:02:03:04', address: '10.77.0.9', gateway: '10.77.0.1' }), /refusing/);
  assert.throws(() => checkNetworkIdentity({ mac: '02:fc:01:02:03:04', address: '10.77.0.256/24', gateway: '10.77.0.1' }), /refusing/);
  assert.throws(() => checkNetworkIdentity({ mac: '02:fc:01:02:03:04', address: '10.77.0.9/24', gateway: '10.77.0.1 dev eth1' }), /refusing/);
  assert.throws(() => checkNetworkIdentity(null as never), /refusing/);
});

test('createTap makes a persistent TAP owned by the VMM\'s user, which removeTap deletes', { skip: process.getuid?.() !== 0 ? 'needs root (creates a TAP)' : false }, async () => {
  const tap = `shoal-t${crypto.randomBytes(3).toString('hex')}`;
  try {
    await createTap(tap, { uid: 4321, gid: 4322 });
    assert.equal(fs.readFileSync(`/sys/class/net/${tap}/owner`, 'utf8').trim(), '4321');
    assert.equal(fs.readFileSync(`/sys/class/net/${tap}/group`, 'utf8').trim(), '4322');
    // Persistent: no process holds it, and it is still there.
    assert.equal(fs.readFileSync(`/sys/class/net/${tap}/tun_flags`, 'utf8').trim() !== '', true);
    // Made again (a stale one from a dead VMM): replaced, not an error.
    await createTap(tap);
    assert.equal(fs.readFileSync(`/sys/class/net/${tap}/owner`, 'utf8').trim(), '-1');
  } finally {
    await removeTap(tap);
  }
  assert.equal(fs.existsSync(`/sys/class/net/${tap}`), false);
});

test('fork children publish on HOST+i-1, within the port range', () => {
  const forwards = parsePublish(['127.0.0.1:8080:80', '5353:53/udp']);
  assert.deepEqual(forwardsForChild(forwards, 3, 3).map((f) => [f.hostAddress, f.hostPort, f.guestPort, f.proto]), [['127.0.0.1', 8082, 80, 'tcp'], ['0.0.0.0', 5355, 53, 'udp']]);
  assert.throws(() => forwardsForChild(parsePublish(['65535:80']), 1, 2), /cannot publish 65535\/tcp for 2 clones: port 65536 is out of range/);
});

test('a TAP whose VM holds no live address claim is removed as an orphan; a claimed one stays', { skip: process.getuid?.() !== 0 ? 'needs root (creates TAPs)' : false }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-claims-'));
  const live = `live${crypto.randomBytes(4).toString('hex')}`;
  const dead = `dead${crypto.randomBytes(4).toString('hex')}`;
  const gone = `gone${crypto.randomBytes(4).toString('hex')}`;
  try {
    claimAddress(live, process.pid, dir);
    // A claim whose supervisor is gone (a pid that cannot exist), and a TAP with no claim at all.
    claimAddress(dead, 2 ** 22 + 1, dir);
    for (const id of [live, dead, gone]) await createTap(tapName(id));
    // Only this test's TAPs are looked at: a VM running on this host has its claim elsewhere.
    const removed = await removeOrphanTaps(dir, [live, dead, gone].map(tapName));
    assert.ok(removed.includes(tapName(dead)) && removed.includes(tapName(gone)), removed.join(','));
    assert.ok(!removed.includes(tapName(live)));
    assert.ok(fs.existsSync(`/sys/class/net/${tapName(live)}`));
    assert.ok(!fs.existsSync(`/sys/class/net/${tapName(dead)}`));
    assert.ok(!fs.existsSync(`/sys/class/net/${tapName(gone)}`));
  } finally {
    for (const id of [live, dead, gone]) await removeTap(tapName(id));
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('--network takes podman\'s allow_host_loopback option for the user-mode modes only', () => {
  assert.deepEqual(parseNetwork('slirp4netns'), { mode: 'slirp4netns' });
  assert.deepEqual(parseNetwork('slirp4netns:allow_host_loopback=true'), { mode: 'slirp4netns', allowHostLoopback: true });
  assert.deepEqual(parseNetwork('rootless:allow_host_loopback=false'), { mode: 'rootless', allowHostLoopback: false });
  assert.throws(() => parseNetwork('bridged:allow_host_loopback=true'), (err: Error) => err.message === 'invalid --network "bridged:allow_host_loopback=true": allow_host_loopback applies to rootless and slirp4netns only');
  assert.throws(() => parseNetwork('slirp4netns:mtu=1500'), /unknown option "mtu=1500"/);
  assert.throws(() => parseNetwork('slirp4netns:allow_host_loopback=yes'), /unknown option/);
  assert.throws(() => parseNetwork('slirp:allow_host_loopback=true'), /invalid --network "slirp"/);
  // Who reaches the host's loopback: QEMU's slirp always (it cannot withhold it), the namespace only when asked.
  assert.equal(reachesHostLoopback('qemu-slirp', undefined), true);
  assert.equal(reachesHostLoopback('namespace', undefined), false);
  assert.equal(reachesHostLoopback('namespace', true), true);
  assert.equal(reachesHostLoopback('bridge', true), false);
  assert.throws(() => checkNetworkSupport('rootless', 'qemu', [], { allowHostLoopback: false }), /not possible on qemu: .*use --network slirp4netns/);
});

test('a proxy on the host\'s loopback is named in one line when the guest cannot reach it', () => {
  assert.equal(loopbackProxyProblem({ http_proxy: 'http://proxy.example:3128', no_proxy: 'localhost' }, 'slirp4netns'), null);
  const problem = loopbackProxyProblem({ HTTPS_PROXY: 'http://user:pw@127.0.0.1:3128/' }, 'slirp4netns');
  assert.equal(problem, 'HTTPS_PROXY names a proxy on the host\'s loopback, which a --network slirp4netns guest cannot reach by default: use --network slirp4netns:allow_host_loopback=true to let the guest reach the host\'s loopback, or unset HTTPS_PROXY');
  assert.match(loopbackProxyProblem({ http_proxy: 'http://localhost:8080' }, 'rootless') ?? '', /^http_proxy names a proxy on the host's loopback/);
  assert.match(loopbackProxyProblem({ http_proxy: 'http://[::1]:8080' }, 'rootless') ?? '', /on the host's loopback/);
});
