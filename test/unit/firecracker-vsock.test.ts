/**
 * The hybrid vsock client against a peer implementing Firecracker's
 * documented handshake (docs/vsock.md).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connectHybridVsock, guestInitiatedPath, listenHybridVsock, VsockConnectError } from '../../src/vmm/firecracker/hybrid-vsock';
import { HybridVsockPeer } from '../helpers/firecracker-vsock-peer';

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fcv-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function readN(s: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const onData = (c: Buffer): void => {
      buf = Buffer.concat([buf, c]);
      if (buf.length >= n) {
        s.removeListener('data', onData);
        resolve(buf);
      }
    };
    s.on('data', onData);
    s.once('error', reject);
  });
}

async function withPeer<T>(name: string, opts: ConstructorParameters<typeof HybridVsockPeer>[1], fn: (peer: HybridVsockPeer, uds: string) => Promise<T>): Promise<T> {
  const uds = path.join(dir, name);
  const peer = new HybridVsockPeer(uds, opts);
  await peer.start();
  try {
    return await fn(peer, uds);
  } finally {
    await peer.stop();
  }
}

describe('hybrid vsock, host-initiated', () => {
  it('connects, preserves bytes sent right after OK, and carries data both ways', async () => {
    const banner = Buffer.from('HELLO-FROM-GUEST\x00\x01\x02');
    await withPeer('ok.sock', { extraAfterOk: banner }, async (peer, uds) => {
      peer.listen(1024, (s) => {
        // Echo whatever comes after the banner.
        s.on('data', (c: Buffer) => s.write(c));
      });
      const s = await connectHybridVsock(uds, 1024, 2000);
      try {
        assert.deepEqual(peer.connects, [1024]);
        // The banner arrived in the same segment as "OK ...\n"; it must be readable first.
        const first = await readN(s, banner.length);
        assert.deepEqual(first.subarray(0, banner.length), banner);
        const payload = Buffer.from('ping over vsock\n'.repeat(1000));
        const echoed = readN(s, payload.length);
        s.write(payload);
        assert.deepEqual((await echoed).subarray(0, payload.length), payload);
      } finally {
        s.destroy();
      }
    });
  });

  it('pipes work on the returned stream (no bytes lost when the consumer attaches late)', async () => {
    await withPeer('late.sock', { extraAfterOk: Buffer.from('early') }, async (peer, uds) => {
      peer.listen(52, (s) => s.end());
      const s = await connectHybridVsock(uds, 52, 2000);
      await new Promise((r) => setTimeout(r, 50));
      const chunks: Buffer[] = [];
      await new Promise<void>((resolve) => {
        s.on('data', (c: Buffer) => chunks.push(c));
        s.on('end', () => resolve());
      });
      assert.equal(Buffer.concat(chunks).toString(), 'early');
    });
  });

  it('a port nobody listens on is refused with an error naming the port', async () => {
    await withPeer('refuse.sock', {}, async (_peer, uds) => {
      await assert.rejects(connectHybridVsock(uds, 4242, 2000), (e: unknown) => {
        assert.ok(e instanceof VsockConnectError);
        assert.equal(e.port, 4242);
        assert.equal(e.reason, 'closed');
        assert.match(e.message, /guest port 4242/);
        return true;
      });
    });
  });

  it('a peer that closes mid-handshake is an error', async () => {
    await withPeer('mid.sock', { mode: 'close-mid' }, async (peer, uds) => {
      peer.listen(1024, () => {});
      await assert.rejects(connectHybridVsock(uds, 1024, 2000), (e: unknown) => e instanceof VsockConnectError && e.reason === 'closed' && /port 1024/.test(e.message));
    });
  });

  it('a reply other than OK is an error', async () => {
    await withPeer('garbage.sock', { mode: 'garbage' }, async (_peer, uds) => {
      await assert.rejects(connectHybridVsock(uds, 1024, 2000), (e: unknown) => e instanceof VsockConnectError && e.reason === 'bad-reply' && /ERR no such port/.test(e.message));
    });
  });

  it('a peer that never answers times out', async () => {
    await withPeer('silent.sock', { mode: 'silent' }, async (_peer, uds) => {
      const t0 = Date.now();
      await assert.rejects(connectHybridVsock(uds, 1024, 150), (e: unknown) => e instanceof VsockConnectError && e.reason === 'timeout' && /port 1024/.test(e.message));
      assert.ok(Date.now() - t0 >= 140);
    });
  });

  it('a missing socket is refused', async () => {
    await assert.rejects(connectHybridVsock(path.join(dir, 'nope.sock'), 1024, 500), (e: unknown) => e instanceof VsockConnectError && e.reason === 'refused');
  });

  it('rejects an invalid port before connecting', async () => {
    await assert.rejects(connectHybridVsock('/x', -1, 100), RangeError);
  });
});

describe('hybrid vsock, guest-initiated', () => {
  it('listens on <uds_path>_<port> and accepts the connection Firecracker forwards', async () => {
    const uds = path.join(dir, 'v.sock');
    assert.equal(guestInitiatedPath(uds, 52), `${uds}_52`);
    fs.writeFileSync(`${uds}_52`, 'stale'); // a stale file is replaced
    const got = new Promise<string>((resolve) => {
      void listenHybridVsock(uds, 52, (s) => s.once('data', (c: Buffer) => { resolve(c.toString()); s.end(); })).then((srv) => {
        servers.push(srv);
        // Firecracker, on the guest's behalf, connects to uds_52 and just streams.
        const c = net.createConnection(`${uds}_52`, () => c.end('from guest'));
      });
    });
    const servers: net.Server[] = [];
    assert.equal(await got, 'from guest');
    for (const s of servers) s.close();
  });
});
