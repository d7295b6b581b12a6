/**
 * userfaultfd, for real (root here): the raw primitives, the native page
 * server in-process, and UffdServer against child processes that play
 * Firecracker's side of the Uffd handshake exactly (test/helpers/uffd-peer.ts).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import * as N from '../../src/native/index';
import { UffdHandshakeError, UffdServer, parseUffdMappings } from '../../src/snapshot/uffd-server';
import { UffdPeer } from '../helpers/uffd-peer';

const PAGE = 4096;
const FILE_PAGES = 64;

let dir: string;
let memFile: string;
let fileBytes: Buffer;

/** Every page is distinct: "page NNN" header, then bytes that depend on (page, index). */
function patterned(pages: number): Buffer {
  const b = Buffer.alloc(pages * PAGE);
  for (let p = 0; p < pages; p++) {
    for (let i = 0; i < PAGE; i++) b[p * PAGE + i] = (p * 31 + i * 7 + 1) & 0xff;
    b.write(`page ${String(p).padStart(3, '0')}`, p * PAGE, 'latin1');
  }
  return b;
}

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-uffd-'));
  memFile = path.join(dir, 'mem');
  fileBytes = patterned(FILE_PAGES);
  fs.writeFileSync(memFile, fileBytes);
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

const filePage = (n: number, count = 1): Buffer => fileBytes.subarray(n * PAGE, (n + count) * PAGE);

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('parseUffdMappings (Firecracker handshake body)', () => {
  it('accepts what Firecracker 1.16 sends (page_size and the deprecated page_size_kib, both bytes)', () => {
    const body = JSON.stringify([
      { base_host_virt_addr: 140000000000000 - (140000000000000 % PAGE), size: 8 * PAGE, offset: 0, page_size: PAGE, page_size_kib: PAGE },
      { base_host_virt_addr: 0x7f0000000000, size: 4 * PAGE, offset: 8 * PAGE, page_size: PAGE, page_size_kib: PAGE },
    ]);
    const m = parseUffdMappings(body, 12 * PAGE);
    assert.equal(m.length, 2);
    assert.deepEqual(m[1], { base_host_virt_addr: 0x7f0000000000, size: 4 * PAGE, offset: 8 * PAGE, page_size: PAGE });
  });

  it('accepts older releases that only send page_size_kib (and a KiB value), and 2 MiB pages', () => {
    const base = 0x7f0000000000;
    assert.equal(parseUffdMappings(JSON.stringify([{ base_host_virt_addr: base, size: PAGE, offset: 0, page_size_kib: PAGE }]))[0]?.page_size, PAGE);
    assert.equal(parseUffdMappings(JSON.stringify([{ base_host_virt_addr: base, size: PAGE, offset: 0, page_size_kib: 4 }]))[0]?.page_size, PAGE);
    const huge = 2 << 20;
    assert.equal(parseUffdMappings(JSON.stringify([{ base_host_virt_addr: base, size: huge, offset: huge, page_size: huge }]))[0]?.page_size, huge);
  });

  it('rejects malformed, misaligned, overlapping and out-of-file mappings', () => {
    const base = 0x7f0000000000;
    const bad = (v: unknown, size?: number): void =>
      assert.throws(() => parseUffdMappings(typeof v === 'string' ? v : JSON.stringify(v), size), UffdHandshakeError);
    bad('not json');
    bad({ base_host_virt_addr: base });
    bad([]);
    bad([{ base_host_virt_addr: base, size: PAGE, offset: 0 }]); // no page size
    bad([{ base_host_virt_addr: base, size: PAGE, offset: 0, page_size: 3000 }]);
    bad([{ base_host_virt_addr: base + 1, size: PAGE, offset: 0, page_size: PAGE }]);
    bad([{ base_host_virt_addr: base, size: PAGE, offset: 0, page_size: PAGE, page_size_kib: 2 << 20 }]);
    bad([{ base_host_virt_addr: -PAGE, size: PAGE, offset: 0, page_size: PAGE }]);
    bad([
      { base_host_virt_addr: base, size: 2 * PAGE, offset: 0, page_size: PAGE },
      { base_host_virt_addr: base + PAGE, size: PAGE, offset: 0, page_size: PAGE },
    ]);
    bad([{ base_host_virt_addr: base, size: 2 * PAGE, offset: 63 * PAGE, page_size: PAGE }], 64 * PAGE);
  });
});

describe('userfaultfd primitives', () => {
  it('creates, handshakes, registers, copies and zero-fills without faulting', () => {
    const uffd = N.uffdCreate();
    const api = N.uffdApiHandshake(uffd, N.UFFD_FEATURE_EVENT_REMOVE);
    assert.ok(api.features & N.UFFD_FEATURE_EVENT_REMOVE, 'kernel supports EVENT_REMOVE');
    const len = 4 * PAGE;
    const addr = N.testOnly.mmapAnon(len);
    const ioctls = N.uffdRegister(uffd, addr, len);
    // _UFFDIO_COPY (bit 3) and _UFFDIO_ZEROPAGE (bit 4) are available on the range.
    assert.ok(ioctls & (1 << 3) && ioctls & (1 << 4), `ioctls ${ioctls.toString(2)}`);
    assert.deepEqual(N.uffdReadEvents(uffd), []);
    // Populate before anyone touches it: no fault, so reading cannot block.
    assert.equal(N.uffdCopy(uffd, addr, filePage(5, 2)), 2 * PAGE);
    assert.equal(N.uffdZeropage(uffd, addr + 2 * PAGE, PAGE), PAGE);
    assert.throws(() => N.uffdCopy(uffd, addr, filePage(9)), { code: 'EEXIST' });
    N.uffdWake(uffd, addr, PAGE);
    assert.ok(N.testOnly.memRead(addr, 2 * PAGE).equals(filePage(5, 2)));
    assert.ok(N.testOnly.memRead(addr + 2 * PAGE, PAGE).equals(Buffer.alloc(PAGE)));
    N.uffdUnregister(uffd, addr, len);
    // Unregistered: the last page is ordinary anonymous memory again.
    assert.ok(N.testOnly.memRead(addr + 3 * PAGE, PAGE).equals(Buffer.alloc(PAGE)));
    N.testOnly.munmap(addr, len);
    N.closeFd(uffd);
  });

  it('serves faults of this very process from the native page server thread', async () => {
    const server = N.pageServerStart(memFile);
    assert.equal(server.size, FILE_PAGES * PAGE);
    const uffd = N.uffdCreate();
    N.uffdApiHandshake(uffd, N.UFFD_FEATURE_EVENT_REMOVE);
    const len = 8 * PAGE;
    const addr = N.testOnly.mmapAnon(len);
    N.uffdRegister(uffd, addr, len);
    const client = N.pageServerAddClient(server, uffd, [
      { base_host_virt_addr: addr, size: len, offset: 20 * PAGE, page_size: PAGE },
    ]);
    // The JS thread faults; the native thread resolves it.
    assert.ok(N.testOnly.memRead(addr + 3 * PAGE, PAGE).equals(filePage(23)));
    assert.ok(N.testOnly.memRead(addr + PAGE + 100, 50).equals(filePage(21).subarray(100, 150)));
    // The faulting thread is woken by UFFDIO_COPY itself, a moment before the
    // server thread bumps its counter: wait for the counters to settle.
    await until(() => N.pageServerClientStats(client).pagesCopied === 2, 'pagesCopied == 2');
    const s = N.pageServerClientStats(client);
    assert.equal(s.running, true);
    assert.equal(s.faults, 2);
    const final = N.pageServerStopClient(client);
    assert.equal(final.running, false);
    assert.equal(final.exitReason, 'stopped');
    N.pageServerStop(server);
    N.testOnly.munmap(addr, len);
  });
});

describe('a page-fault handler written in JS with the primitives', () => {
  it('receives the uffd over SCM_RIGHTS, reads pagefault/remove events and resolves them', async () => {
    const sockPath = path.join(dir, 'js-handler.sock');
    const listenFd = N.unixListen(sockPath);
    const peer = UffdPeer.spawn();
    try {
      const setup = peer.setup({ socketPath: sockPath, regions: [{ size: 4 * PAGE, offset: 40 * PAGE }] });
      const conn = await N.acceptFd(listenFd);
      const msg = await N.recvFds(conn, 1, 4096, { timeoutMs: 5000 });
      await setup;
      assert.equal(msg.fds.length, 1);
      const uffd = msg.fds[0]!;
      const [m] = parseUffdMappings(msg.data, fileBytes.length);
      assert.ok(m);
      const seen: N.UffdEvent[] = [];
      let removed = false;
      let stop = false;
      const loop = (async () => {
        while (!stop) {
          await N.waitFd(uffd, 'readable', { ref: false });
          for (const ev of N.uffdReadEvents(uffd)) {
            seen.push(ev);
            if (ev.type === 'remove') removed = true;
            if (ev.type !== 'pagefault') continue;
            const page = ev.address - (ev.address % PAGE);
            if (removed) N.uffdZeropage(uffd, page, PAGE);
            else N.uffdCopy(uffd, page, filePage((m.offset + page - m.base_host_virt_addr) / PAGE));
          }
        }
      })();
      assert.ok((await peer.read(0, 2 * PAGE, PAGE)).equals(filePage(42)));
      await peer.dontneed(0, 2 * PAGE, PAGE);
      assert.ok((await peer.read(0, 2 * PAGE, PAGE)).equals(Buffer.alloc(PAGE)));
      assert.deepEqual(
        seen.map((e) => e.type),
        ['pagefault', 'remove', 'pagefault'],
      );
      const rm = seen[1] as { start: number; end: number };
      assert.deepEqual([rm.start, rm.end], [m.base_host_virt_addr + 2 * PAGE, m.base_host_virt_addr + 3 * PAGE]);
      stop = true;
      N.closeFd(uffd); // cancels the pending waitFd
      await loop.catch((err: NodeJS.ErrnoException) => assert.equal(err.code, 'ECANCELED'));
      N.closeFd(conn);
    } finally {
      await peer.kill();
      N.closeFd(listenFd);
      fs.rmSync(sockPath, { force: true });
    }
  });
});

describe('UffdServer with Firecracker-like peers', () => {
  // Regions deliberately out of file order and with gaps between them.
  const regions = [
    { size: 8 * PAGE, offset: 32 * PAGE },
    { size: 16 * PAGE, offset: 4 * PAGE },
    { size: 4 * PAGE, offset: 60 * PAGE },
  ];
  let server: UffdServer;
  let socketPath: string;
  const exits: Array<{ pid: number; reason?: string; faults: number }> = [];
  const handshakeErrors: string[] = [];
  const peers: UffdPeer[] = [];

  before(() => {
    socketPath = path.join(dir, 'uffd.sock');
    server = UffdServer.listen({ socketPath, memFile, handshakeTimeoutMs: 1000 });
    server.on('clientExit', (info, stats) => exits.push({ pid: info.pid, reason: stats.exitReason, faults: stats.faults }));
    server.on('handshakeError', (err) => handshakeErrors.push(err.message));
  });
  after(async () => {
    for (const p of peers) await p.kill();
    await server.close();
    assert.equal(fs.existsSync(socketPath), false, 'socket removed on close');
  });

  function spawnPeer(): UffdPeer {
    const p = UffdPeer.spawn();
    peers.push(p);
    return p;
  }

  it('serves the snapshot bytes at the right file offsets, across several regions', async () => {
    const peer = spawnPeer();
    await peer.setup({ socketPath, regions });
    await until(() => server.clients().some((c) => c.pid === peer.pid), 'client registration');
    assert.ok((await peer.read(0, 0, PAGE)).equals(filePage(32)));
    assert.ok((await peer.read(0, 7 * PAGE, PAGE)).equals(filePage(39)));
    assert.ok((await peer.read(1, 0, 3 * PAGE)).equals(filePage(4, 3)));
    assert.ok((await peer.read(1, 15 * PAGE + 4000, 96)).equals(filePage(19).subarray(4000)));
    assert.ok((await peer.read(2, 2 * PAGE, 2 * PAGE)).equals(filePage(62, 2)));
    // Reading again does not fault again.
    assert.ok((await peer.read(0, 0, PAGE)).equals(filePage(32)));
    const stats = () => server.clients().find((x) => x.pid === peer.pid);
    await until(() => stats()?.stats.pagesCopied === 8, 'pagesCopied == 8');
    const c = stats();
    assert.ok(c);
    assert.equal(c.regions.length, 3);
    assert.equal(c.stats.faults, 1 + 1 + 3 + 1 + 2);
  });

  it('accepts the legacy page_size_kib-only handshake', async () => {
    const peer = spawnPeer();
    await peer.setup({ socketPath, regions: [{ size: 2 * PAGE, offset: 10 * PAGE }], legacyPageSizeKib: true });
    assert.ok((await peer.read(0, PAGE, PAGE)).equals(filePage(11)));
  });

  it('serves several concurrent clients; a SIGKILLed one does not disturb the others', async () => {
    const ps = [spawnPeer(), spawnPeer(), spawnPeer()];
    await Promise.all(ps.map((p) => p.setup({ socketPath, regions })));
    // Interleaved first touches, all at once.
    const first = await Promise.all(ps.map((p, i) => p.read(1, i * PAGE, PAGE)));
    first.forEach((b, i) => assert.ok(b.equals(filePage(4 + i)), `peer ${i} first page`));

    const victim = ps[1]!;
    const victimPid = victim.pid;
    const killed = await victim.kill('SIGKILL');
    assert.equal(killed.signal, 'SIGKILL');
    await until(() => exits.some((e) => e.pid === victimPid), 'the killed clone to be reaped');
    const ex = exits.find((e) => e.pid === victimPid);
    assert.equal(ex?.reason, 'peer-closed');
    assert.equal(ex?.faults, 1);

    // The survivors keep being served, pages never touched before included.
    for (const p of [ps[0]!, ps[2]!]) {
      assert.ok((await p.read(0, 3 * PAGE, 2 * PAGE)).equals(filePage(35, 2)));
      assert.ok((await p.read(2, 0, 4 * PAGE)).equals(filePage(60, 4)));
    }
    // And new clients are still accepted after the death.
    const late = spawnPeer();
    await late.setup({ socketPath, regions });
    assert.ok((await late.read(1, 10 * PAGE, PAGE)).equals(filePage(14)));
  });

  it('handles UFFD_EVENT_REMOVE (balloon): removed pages fault back in as zeroes', async () => {
    const peer = spawnPeer();
    await peer.setup({ socketPath, regions });
    assert.ok((await peer.read(1, 2 * PAGE, 2 * PAGE)).equals(filePage(6, 2)));
    // madvise(MADV_DONTNEED) over two touched pages and two never-touched ones.
    await peer.dontneed(1, 2 * PAGE, 4 * PAGE);
    assert.ok((await peer.read(1, 2 * PAGE, 4 * PAGE)).equals(Buffer.alloc(4 * PAGE)), 'removed range reads as zeroes');
    // Outside the removed range the snapshot contents are still served.
    assert.ok((await peer.read(1, 6 * PAGE, PAGE)).equals(filePage(10)));
    assert.ok((await peer.read(1, PAGE, PAGE)).equals(filePage(5)));
    const stats = () => server.clients().find((x) => x.pid === peer.pid)?.stats;
    await until(() => stats()?.pagesCopied === 4 && stats()?.pagesZeroed === 4, 'counters to settle');
    assert.ok(stats()!.removeEvents >= 1, `removeEvents ${stats()!.removeEvents}`);
  });

  it('rejects bad handshakes without affecting the server', async () => {
    const before = handshakeErrors.length;
    const noFd = spawnPeer();
    await noFd.setup({ socketPath, regions, noFd: true });
    const garbage = spawnPeer();
    await garbage.setup({ socketPath, regions, body: '{"not":"an array"}' });
    const beyond = spawnPeer();
    await beyond.setup({ socketPath, regions: [{ size: 8 * PAGE, offset: 60 * PAGE }] });
    await until(() => handshakeErrors.length >= before + 3, 'three handshake errors');
    const errs = handshakeErrors.slice(before).join('\n');
    assert.match(errs, /no userfaultfd/);
    assert.match(errs, /non-empty array/);
    assert.match(errs, /beyond the memory file/);
    const ok = spawnPeer();
    await ok.setup({ socketPath, regions });
    assert.ok((await ok.read(2, 0, PAGE)).equals(filePage(60)));
  });

  it('close() stops every client thread and reports their exits', async () => {
    const s2path = path.join(dir, 'uffd2.sock');
    const s2 = UffdServer.listen({ socketPath: s2path, memFile });
    const ex2: string[] = [];
    s2.on('clientExit', (_i, st) => ex2.push(st.exitReason ?? '?'));
    const p = spawnPeer();
    await p.setup({ socketPath: s2path, regions });
    assert.ok((await p.read(0, 0, PAGE)).equals(filePage(32)));
    await until(() => s2.clients().length === 1, 'registration');
    await s2.close();
    assert.deepEqual(ex2, ['stopped']);
    assert.equal(s2.clients().length, 0);
  });
});
