/**
 * The native addon's socket side: loader errors, waitFd, SCM_RIGHTS over a
 * socketpair, the vsock->Node stream bridge (tested on a socketpair, since the
 * pump does not care about the family), and AF_VSOCK itself (listen/connect
 * over vsock_loopback when the kernel has it).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as N from '../../src/native/index';

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-native-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function closed(s: net.Socket): Promise<void> {
  return s.closed ? Promise.resolve() : new Promise((resolve) => s.once('close', () => resolve()));
}

function collect(s: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  return new Promise((resolve, reject) => {
    s.on('end', () => resolve(Buffer.concat(chunks)));
    s.on('error', reject);
  });
}

describe('native addon loader', () => {
  it('loads the built addon', () => {
    assert.equal(N.isNativeAvailable(), true);
    assert.match(N.nativeAddonPath(), /shoal_native\.node$/);
  });

  it('gives a clear error when the addon is not built', () => {
    // A copy of the compiled wrapper somewhere with no addon next to it or above it.
    const copy = path.join(dir, 'lonely', 'index.js');
    fs.mkdirSync(path.dirname(copy));
    fs.copyFileSync(require.resolve('../../src/native/index'), copy);
    const r = spawnSync(
      process.execPath,
      ['-e', `const n=require(${JSON.stringify(copy)}); console.log(n.isNativeAvailable()); n.socketPair()`],
      { env: { ...process.env, SHOAL_NATIVE_ADDON: path.join(dir, 'missing.node') }, encoding: 'utf8' },
    );
    assert.equal(r.stdout.trim(), 'false');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /NativeAddonUnavailableError/);
    assert.match(r.stderr, /npm run build:native/);
    assert.match(r.stderr, /missing\.node \(SHOAL_NATIVE_ADDON: not found\)/);
  });
});

describe('waitFd', () => {
  it('resolves when readable, can be aborted, and closeFd cancels it', async () => {
    const [a, b] = N.socketPair();
    const p = N.waitFd(a, 'readable');
    fs.writeSync(b, 'x');
    assert.equal((await p) & 1, 1);

    const [c, d] = N.socketPair();
    const ac = new AbortController();
    const p2 = N.waitFd(c, 'readable', { signal: ac.signal });
    ac.abort();
    await assert.rejects(p2, { name: 'AbortError' });

    const p3 = N.waitFd(d, 'readable');
    await assert.rejects(N.waitFd(d, 'readable'), { code: 'EBUSY' });
    N.closeFd(d);
    await assert.rejects(p3, { code: 'ECANCELED' });
    for (const fd of [a, b, c]) N.closeFd(fd);
  });
});

describe('SCM_RIGHTS', () => {
  it('passes fds and payload over a socketpair; the received fd works', async () => {
    const file = path.join(dir, 'scm.txt');
    fs.writeFileSync(file, 'hello through SCM_RIGHTS');
    const fileFd = fs.openSync(file, 'r');
    const [fd2r, fd2w] = N.socketPair(); // a second fd kind: a socket
    const [a, b] = N.socketPair();

    // Receive first: it must wait (not block) until the message arrives.
    const recv = N.recvFds(b, 4, 4096, { timeoutMs: 5000 });
    await new Promise((r) => setImmediate(r));
    await N.sendFds(a, [fileFd, fd2w], Buffer.from('{"hi":1}'));
    const got = await recv;
    assert.equal(got.data.toString(), '{"hi":1}');
    assert.equal(got.fds.length, 2);
    assert.equal(got.truncatedFds, false);
    assert.equal(got.eof, false);
    const [rfile, rsock] = got.fds as [number, number];
    assert.notEqual(rfile, fileFd);
    const buf = Buffer.alloc(64);
    const n = fs.readSync(rfile, buf, 0, 64, 0);
    assert.equal(buf.subarray(0, n).toString(), 'hello through SCM_RIGHTS');
    // The received socket end is the same socket: writing to it reaches fd2r.
    fs.writeSync(rsock, 'via passed socket');
    const echo = await N.recvFds(fd2r, 0, 100);
    assert.equal(echo.data.toString(), 'via passed socket');

    // More fds than maxFds: the extras are dropped (closed) and we are told.
    await N.sendFds(a, [fileFd, fileFd, fileFd], Buffer.from('x'));
    const t = await N.recvFds(b, 1, 100);
    assert.equal(t.fds.length, 1);
    assert.equal(t.truncatedFds, true);

    // EOF once the peer closes.
    N.closeFd(a);
    const e = await N.recvFds(b, 1, 100);
    assert.equal(e.eof, true);

    // A timeout rejects instead of hanging.
    const [x, y] = N.socketPair();
    await assert.rejects(N.recvFds(x, 1, 100, { timeoutMs: 50 }), { name: 'TimeoutError' });

    for (const fd of [fileFd, fd2r, fd2w, b, rfile, rsock, x, y, ...t.fds]) N.closeFd(fd);
  });

  it('reports the peer credentials', () => {
    const [a, b] = N.socketPair();
    assert.deepEqual(N.peerCred(a), { pid: process.pid, uid: process.getuid?.(), gid: process.getgid?.() });
    N.closeFd(a);
    N.closeFd(b);
  });

  it('sends a payload larger than the socket buffer (fds only on the first chunk)', async () => {
    const [a, b] = N.socketPair();
    const big = crypto.randomBytes(4 << 20);
    const sending = N.sendFds(a, [a], big);
    const chunks: Buffer[] = [];
    let fds: number[] = [];
    let got = 0;
    while (got < big.length) {
      const r = await N.recvFds(b, 2, 1 << 16);
      fds = fds.concat(r.fds);
      chunks.push(r.data);
      got += r.data.length;
    }
    await sending;
    assert.ok(Buffer.concat(chunks).equals(big));
    assert.equal(fds.length, 1);
    for (const fd of [a, b, ...fds]) N.closeFd(fd);
  });
});

describe('stream bridge (vsockBridge)', () => {
  it('copies both ways, large and concurrent', async () => {
    const [x, y] = N.socketPair();
    const A = N.vsockStream(x); // x behind the native pump, as a vsock fd would be
    const B = N.socketFromFd(y); // plain unix socket
    const ab = crypto.randomBytes(8 << 20);
    const ba = crypto.randomBytes(3 << 20);
    const gotAtB = collect(B);
    const gotAtA = collect(A);
    A.end(ab);
    B.end(ba);
    const [rb, ra] = await Promise.all([gotAtB, gotAtA]);
    assert.ok(rb.equals(ab), 'A->B intact');
    assert.ok(ra.equals(ba), 'B->A intact');
    A.destroy();
    B.destroy();
  });

  it('propagates half-close in each direction independently', async () => {
    const [x, y] = N.socketPair();
    const A = N.vsockStream(x);
    const B = N.socketFromFd(y);
    const gotAtB = collect(B);
    A.end('request');
    // B saw EOF from A but can still answer.
    assert.equal((await gotAtB).toString(), 'request');
    const gotAtA = collect(A);
    B.end('response after half-close');
    assert.equal((await gotAtA).toString(), 'response after half-close');
    await Promise.all([closed(A), closed(B)]);
  });

  it('ends the JS side when the far side goes away, and vice versa', async () => {
    {
      const [x, y] = N.socketPair();
      const A = N.vsockStream(x);
      const gotAtA = collect(A);
      fs.writeSync(y, 'last words');
      N.closeFd(y); // the "vsock" peer dies
      assert.equal((await gotAtA).toString(), 'last words');
      A.destroy();
    }
    {
      const [x, y] = N.socketPair();
      const A = N.vsockStream(x);
      A.destroy(); // JS side goes away: the pump must close x, so y sees EOF
      const r = await N.recvFds(y, 0, 100, { timeoutMs: 5000 });
      assert.equal(r.eof, true);
      N.closeFd(y);
    }
  });
});

describe('AF_VSOCK', () => {
  const hasVsock = fs.existsSync('/dev/vsock');

  it('listens, refuses a busy port, and accept is cancellable', { skip: !hasVsock && 'no /dev/vsock' }, async () => {
    const cid = N.vsockLocalCid();
    assert.ok(Number.isInteger(cid) && cid >= 1, `local cid ${cid}`);
    const port = 40000 + (process.pid % 20000);
    const l = N.vsockListen(port);
    assert.throws(() => N.vsockListen(port), { code: 'EADDRINUSE' });
    const ac = new AbortController();
    const pending = N.vsockAccept(l, { signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    await assert.rejects(pending, { name: 'AbortError' });
    N.closeFd(l);
  });

  it('connect/accept/bridge over vsock loopback (CID 1)', async (t) => {
    const loopback = ensureVsockLoopback();
    if (loopback !== true) {
      t.diagnostic(`skipping vsock loopback test: ${loopback}`);
      t.skip(loopback);
      return;
    }
    const port = 20000 + (process.pid % 20000);
    const l = N.vsockListen(port);
    const accepted = N.vsockAccept(l);
    const c = await N.vsockConnect(N.VMADDR_CID_LOCAL, port, { timeoutMs: 5000 });
    const s = await accepted;
    const server = N.vsockStream(s);
    const client = N.vsockStream(c);
    server.on('data', (d: Buffer) => server.write(Buffer.from(d.toString().toUpperCase())));
    server.on('end', () => server.end());
    const got = collect(client);
    client.end('hello over vsock');
    assert.equal((await got).toString(), 'HELLO OVER VSOCK');
    N.closeFd(l);
    // Nothing listens on this port: refused (or reset), not a hang.
    await assert.rejects(N.vsockConnect(N.VMADDR_CID_LOCAL, port + 1, { timeoutMs: 3000 }));
  });
});

/** true, or why vsock loopback is unavailable. */
function ensureVsockLoopback(): true | string {
  if (!fs.existsSync('/sys/module/vsock_loopback')) {
    const r = spawnSync('modprobe', ['vsock_loopback'], { encoding: 'utf8' });
    if (r.status !== 0 && !fs.existsSync('/sys/module/vsock_loopback')) {
      const why = (r.stderr || r.error?.message || `exit ${r.status}`).trim().split('\n').pop();
      return `vsock_loopback is not built in and cannot be loaded (modprobe: ${why})`;
    }
  }
  return true;
}
