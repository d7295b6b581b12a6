import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { checkNetworkSupport, macFor, parseNetworkMode } from '../../src/network/mode';
import { assertPortsFree, parsePublish } from '../../src/network/publish';

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
