/**
 * Rootless networking on QEMU (user-mode networking): published ports answer on loopback, a
 * taken port is refused before the VM starts, and nothing is left listening after rm -f.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, test } from 'node:test';
import { busyboxImageForFile } from '../helpers/images';
import { freePort, freePortRange, httpGet } from '../helpers/http';
import { ShoalSandbox, waitUntil, type LsEntry } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('net');
const busybox = busyboxImageForFile();

after(() => {
  sandbox.cleanup();
});

test('published ports answer on loopback, several at once; a taken port is refused; rm -f frees them', async () => {
  const [p1, p2] = [await freePort(), await freePort()];
  const script = [
    'mkdir -p /a /b',
    'echo served-by-8080 > /a/index.html',
    'echo served-by-8081 > /b/index.html',
    'httpd -p 8081 -h /b',
    'exec httpd -f -p 8080 -h /a',
  ].join(' && ');
  const run = await sandbox.run(['run', '-d', '--name', 'web', '-p', `127.0.0.1:${p1}:8080`, '--publish', `127.0.0.1:${p2}:8081/tcp`, busybox.ref, '--', 'sh', '-c', script]);
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

  const [vm] = await sandbox.json<LsEntry[]>(['ls', '--json']);
  assert.equal(vm?.network.mode, 'rootless');
  assert.equal(vm?.network.guestAddress, '10.0.2.15');
  assert.deepEqual(vm?.network.ports, [`127.0.0.1:${p1}->8080/tcp`, `127.0.0.1:${p2}->8081/tcp`]);

  // The same host port again: a one-line error before any VM starts, nothing changed.
  const before = sandbox.leftovers().sort();
  const clash = await sandbox.run(['run', '-d', '--name', 'clash', '-p', `127.0.0.1:${p1}:80`, busybox.ref, '--', 'true'], { timeoutMs: 30_000 });
  assert.notEqual(clash.code, 0);
  assert.match(clash.stderr.toString(), new RegExp(`^shoal: cannot publish 127\\.0\\.0\\.1:${p1}/tcp: the port is already in use\\n$`));
  assert.deepEqual(sandbox.leftovers().sort(), before);

  const rm = await sandbox.run(['rm', '-f', 'web'], { timeoutMs: 60_000 });
  assert.equal(rm.code, 0, rm.stderr.toString());
  assert.deepEqual(sandbox.processes(), []);
  assert.equal(await httpGet(p1), undefined);
  await new Promise<void>((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(p1, '127.0.0.1', () => server.close(() => resolve()));
  });
});

test('the guest reaches the host through user-mode networking, over IPv4 and IPv6; the host\'s proxy settings reach the container', async () => {
  // A server on the host's loopback, reached from the container as slirp's gateway 10.0.2.2. It
  // is also an HTTP proxy: a request for an absolute URL is one sent through a proxy.
  const server = http.createServer((req, res) => res.end(req.url?.startsWith('http://') ? `via-proxy ${req.url}\n` : 'from-the-host\n'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  // IPv6: slirp advertises fec0::/64 and maps fec0::2 to the host's ::1.
  const server6 = http.createServer((req, res) => res.end(`v6 client ${req.socket.remoteAddress}\n`));
  await new Promise<void>((r) => server6.listen(0, '::1', r));
  const port6 = (server6.address() as net.AddressInfo).port;
  try {
    // (busybox wget ignores no_proxy: -Y off makes the direct request.)
    const script = [
      `wget -Y off -q -O - http://10.0.2.2:${port}/`,
      'echo "proxy=$http_proxy no_proxy=$no_proxy"',
      'wget -q -O - http://example.invalid/x',
      // SLAAC takes a moment (duplicate address detection).
      'i=0; while ! ip -6 addr show eth0 | grep -q "inet6 fec0:"; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done',
      `wget -Y off -q -O - "http://[fec0::2]:${port6}/"`,
    ].join(' && ');
    const result = await sandbox.run(['run', '--rm', busybox.ref, '--', 'sh', '-c', script], {
      env: { http_proxy: `http://127.0.0.1:${port}`, no_proxy: '10.0.2.2' },
    });
    assert.equal(result.code, 0, result.stderr.toString());
    // The proxy on the host's loopback is named as the guest reaches it.
    assert.equal(result.stdout.toString(), `from-the-host\nproxy=http://10.0.2.2:${port} no_proxy=10.0.2.2\nvia-proxy http://example.invalid/x\nv6 client ::1\n`);
  } finally {
    server.close();
    server6.close();
  }
});

test('two clones of one snapshot answer on their own published ports, with their own state', async () => {
  const script = 'mkdir -p /a && echo source > /a/index.html && exec httpd -f -p 8080 -h /a';
  const run = await sandbox.run(['run', '-d', '--name', 'origin', busybox.ref, '--', 'sh', '-c', script]);
  assert.equal(run.code, 0, run.stderr.toString());
  const snap = await sandbox.run(['snapshot', 'create', 'origin', '--tag', 'web']);
  assert.equal(snap.code, 0, snap.stderr.toString());
  const ports: number[] = [];
  for (const name of ['c1', 'c2']) {
    const port = await freePort();
    ports.push(port);
    const clone = await sandbox.run(['snapshot', 'run', '--snapshot', 'web', '--name', name, '-p', `127.0.0.1:${port}:8080`]);
    assert.equal(clone.code, 0, clone.stderr.toString());
    const write = await sandbox.run(['exec', name, '--', 'sh', '-c', `echo ${name} > /a/index.html`]);
    assert.equal(write.code, 0, write.stderr.toString());
  }
  for (const [i, name] of ['c1', 'c2'].entries()) {
    let body: string | undefined;
    await waitUntil(`${name} to answer`, 30_000, async () => (body = await httpGet(ports[i]!)) !== undefined);
    assert.equal(body, `${name}\n`);
  }
  const rm = await sandbox.run(['rm', '-f', 'origin', 'c1', 'c2'], { timeoutMs: 60_000 });
  assert.equal(rm.code, 0, rm.stderr.toString());
  assert.equal((await sandbox.run(['snapshot', 'rm', 'web'])).code, 0);
  assert.deepEqual(sandbox.processes(), []);
});

test('each child of a fork answers on its own published port (HOST+i-1), with its own state', async () => {
  // --no-snapshot: the same command as 'origin' above would restore from the image cache, and such a VM cannot be forked.
  const run = await sandbox.run(['run', '-d', '--name', 'fsrc', '--no-snapshot', busybox.ref, '--', 'sh', '-c', 'mkdir -p /a && echo source > /a/index.html && exec httpd -f -p 8080 -h /a']);
  assert.equal(run.code, 0, run.stderr.toString());
  const base = await freePortRange(2);
  const fork = await sandbox.run(['fork', 'fsrc', '-n', '2', '-p', `127.0.0.1:${base}:8080`, '--json']);
  assert.equal(fork.code, 0, fork.stderr.toString());
  const children = (JSON.parse(fork.stdout.toString()) as { children: Array<{ name: string; ports: string[] }> }).children;
  assert.deepEqual(children.map((c) => [c.name, c.ports]), [
    ['fsrc-1', [`127.0.0.1:${base}->8080/tcp`]],
    ['fsrc-2', [`127.0.0.1:${base + 1}->8080/tcp`]],
  ]);
  for (const [i, child] of children.entries()) {
    const write = await sandbox.run(['exec', child.name, 'sh', '-c', `echo ${child.name} > /a/index.html`]);
    assert.equal(write.code, 0, write.stderr.toString());
    let body: string | undefined;
    await waitUntil(`${child.name} to answer`, 30_000, async () => (body = await httpGet(base + i)) !== undefined);
    assert.equal(body, `${child.name}\n`);
  }
  // A taken port is refused before anything is snapshotted or started.
  const taken = await sandbox.run(['fork', 'fsrc', '-n', '2', '--name-prefix', 'again', '-p', `127.0.0.1:${base + 1}:8080`]);
  assert.notEqual(taken.code, 0);
  assert.match(taken.stderr.toString(), new RegExp(`^shoal: cannot publish 127\\.0\\.0\\.1:${base + 1}/tcp: the port is already in use\\n$`));
  const rm = await sandbox.run(['rm', '-f', 'fsrc', 'fsrc-1', 'fsrc-2'], { timeoutMs: 60_000 });
  assert.equal(rm.code, 0, rm.stderr.toString());
  assert.deepEqual(sandbox.processes(), []);
  assert.deepEqual(sandbox.leftovers(), []);
});

test('a clone starts without its source\'s TCP connections and neighbour entries, and its network works', async () => {
  // A host server that holds every connection open, like a peer the source was talking to.
  const held: net.Socket[] = [];
  const server = net.createServer((socket) => held.push(socket));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  const web = http.createServer((_req, res) => res.end('host-answers\n'));
  await new Promise<void>((r) => web.listen(0, '127.0.0.1', r));
  const webPort = (web.address() as net.AddressInfo).port;
  try {
    const run = await sandbox.run(['run', '-d', '--name', 'talker', '--no-snapshot', busybox.ref, '--', 'sh', '-c', `sleep 100000 | nc 10.0.2.2 ${port}`]);
    assert.equal(run.code, 0, run.stderr.toString());
    const state = async (name: string): Promise<{ connections: string; neighbours: string }> => {
      const shown = await sandbox.run(['exec', '--vm', name, '--', 'sh', '-c', `ss -Htn state established dst 10.0.2.2:${port}; echo ---; ip -4 neigh show dev eth0`]);
      assert.equal(shown.code, 0, shown.stderr.toString());
      const [connections = '', neighbours = ''] = shown.stdout.toString().split('---\n');
      return { connections: connections.trim(), neighbours: neighbours.trim() };
    };
    await waitUntil('the source to connect', 30_000, async () => (await state('talker')).connections !== '');
    // A neighbour entry only the source has (a learned gateway would be learned again by the
    // clone's first packet, so this one marks what the clone must not inherit).
    const mark = await sandbox.run(['exec', '--vm', 'talker', '--', 'ip', 'neigh', 'replace', '10.0.2.99', 'lladdr', '02:00:00:00:00:99', 'dev', 'eth0', 'nud', 'stale']);
    assert.equal(mark.code, 0, mark.stderr.toString());
    assert.match((await state('talker')).neighbours, /^10\.0\.2\.99 lladdr 02:00:00:00:00:99 STALE\s*$/m);

    const snap = await sandbox.run(['snapshot', 'create', 'talker', '--tag', 'talk']);
    assert.equal(snap.code, 0, snap.stderr.toString());
    const clone = await sandbox.run(['snapshot', 'run', '--snapshot', 'talk', '--name', 'listener']);
    assert.equal(clone.code, 0, clone.stderr.toString());
    const fresh = await state('listener');
    assert.equal(fresh.connections, '', 'the source\'s connection is not in the clone');
    assert.doesNotMatch(fresh.neighbours, /10\.0\.2\.99/, 'the clone does not inherit its source\'s neighbour entries');
    // And its network works at once: out to the host, and the source still has its connection.
    const out = await sandbox.run(['exec', 'listener', '--', 'wget', '-q', '-O', '-', `http://10.0.2.2:${webPort}/`]);
    assert.equal(out.code, 0, out.stderr.toString());
    assert.equal(out.stdout.toString(), 'host-answers\n');
    const after = await state('talker');
    assert.notEqual(after.connections, '');
    assert.match(after.neighbours, /^10\.0\.2\.99 /m);

    const rm = await sandbox.run(['rm', '-f', 'talker', 'listener'], { timeoutMs: 60_000 });
    assert.equal(rm.code, 0, rm.stderr.toString());
    assert.equal((await sandbox.run(['snapshot', 'rm', 'talk'])).code, 0);
  } finally {
    for (const socket of held) socket.destroy();
    server.close();
    web.close();
  }
});
