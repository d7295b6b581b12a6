/**
 * Plays Firecracker's side of the Uffd memory backend, in a child process,
 * exactly as Firecracker 1.16 does it (src/vmm/src/persist.rs,
 * guest_memory_from_uffd + send_uffd_handshake):
 *
 *   1. mmap anonymous memory for each guest region;
 *   2. create a userfaultfd (O_CLOEXEC | O_NONBLOCK), UFFDIO_API with
 *      UFFD_FEATURE_EVENT_REMOVE, UFFDIO_REGISTER (MISSING) on every region;
 *   3. connect to the page server's socket and send ONE message: the uffd as
 *      SCM_RIGHTS and the JSON array of GuestRegionUffdMapping
 *      {base_host_virt_addr, size, offset, page_size, page_size_kib};
 *   4. keep both the socket and its uffd copy open, then touch guest memory.
 *
 * The parent drives it over the fork IPC channel: read bytes of a region
 * (faulting pages in through the server), madvise(MADV_DONTNEED) a range
 * (what the balloon does: UFFD_EVENT_REMOVE), or die.
 *
 * Usage (parent): const peer = UffdPeer.spawn(); await peer.setup({...}); await peer.read(0, 0, 4096).
 */
import { type ChildProcess, fork } from 'node:child_process';
import {
  O_CLOEXEC,
  O_NONBLOCK,
  UFFD_FEATURE_EVENT_REMOVE,
  UFFDIO_REGISTER_MODE_MISSING,
  sendFds,
  testOnly,
  uffdApiHandshake,
  uffdCreate,
  uffdRegister,
  unixConnect,
} from '../../src/native/index';

export interface PeerRegion {
  size: number;
  /** Offset of this region's contents in the snapshot memory file. */
  offset: number;
}

export interface PeerSetup {
  socketPath: string;
  regions: PeerRegion[];
  pageSize?: number;
  /** Send only the pre-1.11 field name (page_size_kib, in bytes). */
  legacyPageSizeKib?: boolean;
  /** Misbehave: send this body instead of the mappings. */
  body?: string;
  /** Misbehave: do not attach the uffd. */
  noFd?: boolean;
}

type Request =
  | ({ op: 'setup' } & PeerSetup)
  | { op: 'read'; region: number; offset: number; len: number }
  | { op: 'dontneed'; region: number; offset: number; len: number };

type Reply =
  | { op: 'ready'; mappings: unknown[] }
  | { op: 'data'; base64: string }
  | { op: 'ok' }
  | { op: 'error'; message: string };

// ---------------------------------------------------------------------------
// parent side
// ---------------------------------------------------------------------------

export class UffdPeer {
  private queue: Array<(r: Reply) => void> = [];
  private exitInfo: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  private constructor(readonly child: ChildProcess) {
    child.on('message', (m: Reply) => this.queue.shift()?.(m));
    this.exitInfo = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        for (const q of this.queue.splice(0)) q({ op: 'error', message: `peer exited (${code ?? signal})` });
        resolve({ code, signal });
      });
    });
  }

  static spawn(): UffdPeer {
    return new UffdPeer(fork(__filename, ['--uffd-peer'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  private request(req: Request): Promise<Reply> {
    return new Promise((resolve, reject) => {
      this.queue.push((r) => (r.op === 'error' ? reject(new Error(r.message)) : resolve(r)));
      this.child.send(req);
    });
  }

  /** Do Firecracker's handshake; resolves with the mappings it sent. */
  async setup(s: PeerSetup): Promise<Array<{ base_host_virt_addr: number; size: number; offset: number }>> {
    const r = await this.request({ op: 'setup', ...s });
    if (r.op !== 'ready') throw new Error(`unexpected reply ${r.op}`);
    return r.mappings as Array<{ base_host_virt_addr: number; size: number; offset: number }>;
  }

  /** Read guest memory (faults pages in through the page server). */
  async read(region: number, offset: number, len: number): Promise<Buffer> {
    const r = await this.request({ op: 'read', region, offset, len });
    if (r.op !== 'data') throw new Error(`unexpected reply ${r.op}`);
    return Buffer.from(r.base64, 'base64');
  }

  /** madvise(MADV_DONTNEED): the balloon's way of giving pages back (UFFD_EVENT_REMOVE). */
  async dontneed(region: number, offset: number, len: number): Promise<void> {
    await this.request({ op: 'dontneed', region, offset, len });
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    this.child.kill(signal);
    return this.exitInfo;
  }

  exited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.exitInfo;
  }
}

// ---------------------------------------------------------------------------
// child side
// ---------------------------------------------------------------------------

interface Mapped {
  addr: number;
  size: number;
}

async function childMain(): Promise<void> {
  const regions: Mapped[] = [];
  const keep: number[] = []; // fds Firecracker keeps open: its uffd copy and the socket

  const reply = (r: Reply): void => {
    process.send?.(r);
  };

  process.on('message', (req: Request) => {
    void (async () => {
      try {
        if (req.op === 'setup') {
          const pageSize = req.pageSize ?? 4096;
          const uffd = uffdCreate(O_CLOEXEC | O_NONBLOCK);
          keep.push(uffd);
          uffdApiHandshake(uffd, UFFD_FEATURE_EVENT_REMOVE);
          const mappings = req.regions.map((r) => {
            const addr = testOnly.mmapAnon(r.size);
            uffdRegister(uffd, addr, r.size, UFFDIO_REGISTER_MODE_MISSING);
            regions.push({ addr, size: r.size });
            return req.legacyPageSizeKib
              ? { base_host_virt_addr: addr, size: r.size, offset: r.offset, page_size_kib: pageSize }
              : { base_host_virt_addr: addr, size: r.size, offset: r.offset, page_size: pageSize, page_size_kib: pageSize };
          });
          const sock = unixConnect(req.socketPath);
          keep.push(sock);
          const body = Buffer.from(req.body ?? JSON.stringify(mappings));
          await sendFds(sock, req.noFd ? [] : [uffd], body);
          reply({ op: 'ready', mappings });
        } else if (req.op === 'read') {
          const r = regions[req.region];
          if (!r || req.offset + req.len > r.size) throw new Error('read out of range');
          // Blocks this (the child's JS) thread until the server serves the faults.
          const data = testOnly.memRead(r.addr + req.offset, req.len);
          reply({ op: 'data', base64: data.toString('base64') });
        } else if (req.op === 'dontneed') {
          const r = regions[req.region];
          if (!r || req.offset + req.len > r.size) throw new Error('dontneed out of range');
          testOnly.madviseDontneed(r.addr + req.offset, req.len);
          reply({ op: 'ok' });
        }
      } catch (err) {
        reply({ op: 'error', message: err instanceof Error ? err.message : String(err) });
      }
    })();
  });
  process.on('disconnect', () => process.exit(0));
}

if (process.argv[2] === '--uffd-peer') void childMain();
