/**
 * Userfaultfd page server for Firecracker's `Uffd` memory backend.
 *
 * Firecracker's handshake (docs/snapshotting/handling-page-faults-on-snapshot-resume.md,
 * send_uffd_handshake in src/vmm/src/persist.rs): on PUT /snapshot/load with
 * mem_backend {backend_type: "Uffd", backend_path: <our socket>}, Firecracker
 * mmaps guest memory anonymously, creates a userfaultfd (O_NONBLOCK, with
 * UFFD_FEATURE_EVENT_REMOVE), registers every region (MISSING mode), connects
 * to our Unix socket and sends ONE message: the uffd as SCM_RIGHTS plus a JSON
 * array of GuestRegionUffdMapping
 *   {base_host_virt_addr, size, offset, page_size, page_size_kib}
 * (`page_size_kib` is the deprecated, misnamed duplicate of `page_size`; both are
 * in bytes; releases before the rename send only page_size_kib). Nothing else
 * is sent afterwards, but Firecracker keeps the connection open for its whole
 * life, so its hangup tells us the clone is gone.
 *
 * This class accepts those connections, validates the mappings against the
 * memory file and hands uffd + mappings + connection to the native page
 * server (native/src/pageserver.cc), where one thread per clone serves faults
 * from a single read-only mapping of the memory file. A client that dies, or
 * sends garbage, only affects itself.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import {
  type Fd,
  type GuestRegionUffdMapping,
  type PageServerClient,
  type PageServerClientStats,
  type PageServerHandle,
  acceptFd,
  closeFd,
  pageServerAddClient,
  pageServerClientStats,
  pageServerStart,
  pageServerStop,
  pageServerStopClient,
  pageServerWaitClient,
  peerCred,
  recvFds,
  unixListen,
} from '../native/index';

export interface UffdServerOptions {
  /** Unix socket Firecracker connects to (mem_backend.backend_path). */
  socketPath: string;
  /** The snapshot memory file (Firecracker mem_file_path of the snapshot). */
  memFile: string;
  /** Socket file mode (default 0o600: only Firecracker's user may connect). */
  mode?: number;
  /** How long a connected client may take to send its handshake (default 5000 ms). */
  handshakeTimeoutMs?: number;
}

export interface UffdClientInfo {
  /** Native page server client id. */
  id: number;
  /** Firecracker's pid (SO_PEERCRED at connect time). */
  pid: number;
  uid: number;
  regions: GuestRegionUffdMapping[];
}

export interface UffdServerEvents {
  client: [UffdClientInfo];
  clientExit: [UffdClientInfo, PageServerClientStats];
  /** A connection whose handshake failed (bad JSON, no fd, timeout...). The server keeps running. */
  handshakeError: [Error, { pid?: number }];
  /** accept() failed (e.g. EMFILE); the server retries. */
  acceptError: [Error];
}

export class UffdHandshakeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UffdHandshakeError';
  }
}

const MAX_HANDSHAKE_BYTES = 1 << 20;
// Firecracker sends exactly one fd; newer "secret free" builds send 3
// (uffd, guest_memfd, userfault bitmap), which this server does not support.
const MAX_HANDSHAKE_FDS = 4;

function isSafeNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/**
 * Parse and validate Firecracker's handshake body. `memFileSize` (when given)
 * bounds every region's [offset, offset+size).
 */
export function parseUffdMappings(body: string | Buffer, memFileSize?: number): GuestRegionUffdMapping[] {
  let json: unknown;
  try {
    json = JSON.parse(typeof body === 'string' ? body : body.toString('utf8'));
  } catch (err) {
    throw new UffdHandshakeError(`handshake body is not JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(json) || json.length === 0) {
    throw new UffdHandshakeError('handshake body must be a non-empty array of GuestRegionUffdMapping');
  }
  const out: GuestRegionUffdMapping[] = json.map((raw: unknown, i): GuestRegionUffdMapping => {
    if (typeof raw !== 'object' || raw === null) throw new UffdHandshakeError(`mapping ${i} is not an object`);
    const m = raw as Record<string, unknown>;
    for (const k of ['base_host_virt_addr', 'size', 'offset'] as const) {
      if (!isSafeNonNegInt(m[k])) throw new UffdHandshakeError(`mapping ${i}: ${k} must be a non-negative integer`);
    }
    let pageSize = m['page_size'] ?? m['page_size_kib'];
    if (!isSafeNonNegInt(pageSize)) throw new UffdHandshakeError(`mapping ${i}: page_size missing or invalid`);
    if (m['page_size'] !== undefined && m['page_size_kib'] !== undefined && m['page_size'] !== m['page_size_kib']) {
      throw new UffdHandshakeError(`mapping ${i}: page_size and page_size_kib disagree`);
    }
    // page_size_kib has always carried bytes; a value below 4096 can only mean KiB.
    if (pageSize < 4096) pageSize *= 1024;
    if (pageSize < 4096 || (pageSize & (pageSize - 1)) !== 0) {
      throw new UffdHandshakeError(`mapping ${i}: page_size ${pageSize} is not a power of two >= 4096`);
    }
    const r: GuestRegionUffdMapping = {
      base_host_virt_addr: m['base_host_virt_addr'] as number,
      size: m['size'] as number,
      offset: m['offset'] as number,
      page_size: pageSize,
    };
    if (r.size === 0) throw new UffdHandshakeError(`mapping ${i}: size is 0`);
    if (r.base_host_virt_addr % pageSize || r.size % pageSize || r.offset % pageSize) {
      throw new UffdHandshakeError(`mapping ${i}: base/size/offset not aligned to page_size ${pageSize}`);
    }
    if (memFileSize !== undefined && r.offset + r.size > memFileSize) {
      throw new UffdHandshakeError(
        `mapping ${i}: [${r.offset}, ${r.offset + r.size}) lies beyond the memory file (${memFileSize} bytes)`,
      );
    }
    return r;
  });
  const sorted = [...out].sort((a, b) => a.base_host_virt_addr - b.base_host_virt_addr);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    if (prev.base_host_virt_addr + prev.size > sorted[i]!.base_host_virt_addr) {
      throw new UffdHandshakeError('mappings overlap in host address space');
    }
  }
  return out;
}

interface LiveClient {
  info: UffdClientInfo;
  native: PageServerClient;
}

export class UffdServer extends EventEmitter<UffdServerEvents> {
  readonly socketPath: string;
  readonly memFile: string;
  private readonly handshakeTimeoutMs: number;
  private readonly server: PageServerHandle;
  private readonly listenFd: Fd;
  private readonly live = new Map<number, LiveClient>();
  private readonly handshaking = new Set<Fd>();
  private closed = false;
  private readonly acceptLoopDone: Promise<void>;

  /** Map the memory file, bind the socket (replacing a stale one) and start accepting. */
  static listen(opts: UffdServerOptions): UffdServer {
    return new UffdServer(opts);
  }

  private constructor(opts: UffdServerOptions) {
    super();
    this.socketPath = opts.socketPath;
    this.memFile = opts.memFile;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 5000;
    this.server = pageServerStart(opts.memFile);
    try {
      removeStaleSocket(opts.socketPath);
      this.listenFd = unixListen(opts.socketPath, { mode: opts.mode ?? 0o600 });
    } catch (err) {
      pageServerStop(this.server);
      throw err;
    }
    this.acceptLoopDone = this.acceptLoop();
  }

  /** Currently served clients with live stats. */
  clients(): Array<UffdClientInfo & { stats: PageServerClientStats }> {
    return [...this.live.values()].map((c) => ({ ...c.info, stats: pageServerClientStats(c.native) }));
  }

  /** Stop accepting, stop serving every client (their VMs would then hang on faults), remove the socket. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    closeFd(this.listenFd); // cancels the pending accept
    for (const fd of this.handshaking) closeFd(fd);
    this.handshaking.clear();
    await this.acceptLoopDone;
    for (const c of [...this.live.values()]) {
      this.live.delete(c.info.id);
      const stats = pageServerStopClient(c.native);
      this.emit('clientExit', c.info, stats);
    }
    pageServerStop(this.server);
    try {
      fs.unlinkSync(this.socketPath);
    } catch {
      // already gone
    }
  }

  private async acceptLoop(): Promise<void> {
    while (!this.closed) {
      let conn: Fd;
      try {
        conn = await acceptFd(this.listenFd);
      } catch (err) {
        if (this.closed) return;
        this.emit('acceptError', err as Error);
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      void this.handshake(conn);
    }
  }

  private async handshake(conn: Fd): Promise<void> {
    this.handshaking.add(conn);
    let pid: number | undefined;
    let uffd: Fd | undefined;
    const extraFds: Fd[] = [];
    try {
      const cred = peerCred(conn);
      pid = cred.pid;
      const deadline = Date.now() + this.handshakeTimeoutMs;
      const chunks: Buffer[] = [];
      let bytes = 0;
      let regions: GuestRegionUffdMapping[] | undefined;
      // One sendmsg on Firecracker's side, but a stream socket may still split
      // it: read until the JSON parses. The fd rides on the first chunk.
      while (!regions) {
        const timeoutMs = Math.max(1, deadline - Date.now());
        let r;
        try {
          r = await recvFds(conn, MAX_HANDSHAKE_FDS, 64 * 1024, { timeoutMs });
        } catch (err) {
          if ((err as Error).name === 'TimeoutError') {
            throw new UffdHandshakeError(`no complete handshake within ${this.handshakeTimeoutMs} ms`);
          }
          throw err;
        }
        for (const fd of r.fds) {
          if (uffd === undefined) uffd = fd;
          else extraFds.push(fd);
        }
        if (r.truncatedFds || extraFds.length > 0) {
          throw new UffdHandshakeError(
            'client sent more than one fd (guest_memfd / secret-free handshakes are not supported)',
          );
        }
        if (r.eof) throw new UffdHandshakeError('connection closed before the handshake completed');
        chunks.push(r.data);
        bytes += r.data.length;
        if (bytes > MAX_HANDSHAKE_BYTES) throw new UffdHandshakeError('handshake body too large');
        const body = Buffer.concat(chunks);
        try {
          JSON.parse(body.toString('utf8'));
        } catch {
          continue; // incomplete, read more
        }
        regions = parseUffdMappings(body, this.server.size);
      }
      if (uffd === undefined) throw new UffdHandshakeError('handshake carried no userfaultfd (SCM_RIGHTS)');
      if (this.closed) throw new UffdHandshakeError('server closed');
      this.handshaking.delete(conn);
      // Ownership of uffd and conn passes to the native client (even if it throws).
      const fdToHand = uffd;
      uffd = undefined;
      const native = pageServerAddClient(this.server, fdToHand, regions, { connFd: conn });
      const info: UffdClientInfo = { id: native.id, pid: cred.pid, uid: cred.uid, regions };
      this.live.set(native.id, { info, native });
      this.emit('client', info);
      void this.watch(info, native);
    } catch (err) {
      if (this.handshaking.delete(conn)) closeFd(conn);
      if (uffd !== undefined) closeFd(uffd);
      for (const fd of extraFds) closeFd(fd);
      if (!this.closed) this.emit('handshakeError', err as Error, pid === undefined ? {} : { pid });
    }
  }

  /** Wait (without holding the event loop) for the client thread to exit by itself. */
  private async watch(info: UffdClientInfo, native: PageServerClient): Promise<void> {
    let stats: PageServerClientStats;
    try {
      stats = await pageServerWaitClient(native, { ref: false });
    } catch {
      return; // cancelled by close(), which reports the exit itself
    }
    if (this.live.delete(info.id)) this.emit('clientExit', info, stats);
  }
}

function removeStaleSocket(p: string): void {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(p);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${p} exists and is not a socket`);
  fs.unlinkSync(p);
}
