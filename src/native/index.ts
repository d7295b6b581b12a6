/**
 * Typed wrapper around shoal's one N-API addon (native/, built with
 * `npm run build:native`): the syscalls Node lacks.
 *
 *  - AF_VSOCK listen/accept/connect, plus a bridge to a Node stream (the guest
 *    agent under Firecracker);
 *  - SCM_RIGHTS fd passing over Unix sockets;
 *  - userfaultfd primitives and a native page server for Firecracker's Uffd
 *    memory backend (src/snapshot/uffd-server.ts drives it);
 *  - a clone's recovery in the guest without starting a process: clock step,
 *    crng reseed, neighbour flush, killing TCP connections, a new MAC/address.
 *
 * Depends on Node built-ins only: the guest agent (Node 18, no npm packages)
 * uses it too. The addon is loaded lazily on first use, so importing this
 * module never fails; calling into it without a built addon throws
 * NativeAddonUnavailableError saying how to build it.
 *
 * Async model: every socket the addon creates is O_NONBLOCK. An operation is
 * tried directly; on "would block" we await the fd's readiness on Node's own
 * event loop (native waitFd = a libuv poll handle) and retry. Nothing blocks
 * the JS thread and nothing occupies the libuv threadpool, however long an
 * accept() waits.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export type Fd = number;

/** AF_VSOCK addresses (linux/vm_sockets.h). */
export const VMADDR_CID_ANY = 0xffffffff;
export const VMADDR_CID_HYPERVISOR = 0;
/** Local loopback (needs the vsock_loopback transport). */
export const VMADDR_CID_LOCAL = 1;
export const VMADDR_CID_HOST = 2;

/** open(2)/userfaultfd(2) flags. */
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
/** userfaultfd(2): only trap user-mode faults (not what Firecracker wants: KVM faults in kernel mode). */
export const UFFD_USER_MODE_ONLY = 1;
/** UFFDIO_API features (linux/userfaultfd.h). */
export const UFFD_FEATURE_EVENT_REMOVE = 1 << 3;
export const UFFD_FEATURE_EVENT_UNMAP = 1 << 6;
export const UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4;
/** UFFDIO_REGISTER modes. */
export const UFFDIO_REGISTER_MODE_MISSING = 1;
export const UFFDIO_REGISTER_MODE_WP = 2;
/** UFFDIO_COPY / UFFDIO_ZEROPAGE mode: do not wake the faulting thread (use uffdWake later). */
export const UFFDIO_MODE_DONTWAKE = 1;

export interface RecvFdsResult {
  /** Received descriptors (O_CLOEXEC); the caller owns and must close them. */
  fds: Fd[];
  data: Buffer;
  /** The peer closed the connection (no data, no fds). */
  eof: boolean;
  /** The sender sent more fds than maxFds; the kernel closed the extras. */
  truncatedFds: boolean;
}

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

export type UffdEvent =
  | { type: 'pagefault'; address: number; flags: number }
  | { type: 'remove'; start: number; end: number }
  | { type: 'unmap'; start: number; end: number }
  | { type: 'other'; event: number };

/**
 * One guest memory region as Firecracker describes it in the uffd handshake
 * (GuestRegionUffdMapping); the native page server takes exactly this shape.
 * `page_size` is in bytes.
 */
export interface GuestRegionUffdMapping {
  base_host_virt_addr: number;
  size: number;
  offset: number;
  page_size: number;
}

export interface PageServerHandle {
  readonly id: number;
  /** Size of the mapped snapshot memory file in bytes. */
  readonly size: number;
}

export interface PageServerClient {
  readonly id: number;
  /** eventfd the client thread signals when it exits (owned by the addon). */
  readonly doneFd: Fd;
}

export interface PageServerClientStats {
  id: number;
  running: boolean;
  /** UFFD_EVENT_PAGEFAULT events handled. */
  faults: number;
  /** Pages filled from the snapshot file (UFFDIO_COPY). */
  pagesCopied: number;
  /** Pages filled with zeroes: balloon-removed ranges, or beyond the end of the file. */
  pagesZeroed: number;
  /** UFFD_EVENT_REMOVE (and UNMAP) events. */
  removeEvents: number;
  /** Faults on pages that were already present (raced); woken with UFFDIO_WAKE. */
  eexist: number;
  /** Populate attempts that got EAGAIN (a REMOVE was queued) and were retried. */
  retries: number;
  /** Faults outside every region or failing with an unexpected errno. */
  unhandled: number;
  /** Set once the thread exited: stopped | peer-closed | mm-gone | uffd-error | ... */
  exitReason?: string;
  exitErrno?: number;
}

/** The raw binding; argument checking happens natively. */
interface NativeBinding {
  abiVersion: number;
  waitFd(fd: Fd, events: number, ref: boolean): Promise<number>;
  cancelWait(fd: Fd): boolean;
  close(fd: Fd): void;
  setNonBlocking(fd: Fd, on: boolean): void;
  vsockListen(port: number, backlog?: number, cid?: number): Fd;
  vsockConnectStart(cid: number, port: number): Fd;
  vsockLocalCid(): number;
  socketError(fd: Fd): number;
  accept(fd: Fd): Fd | null;
  unixListen(path: string, backlog?: number, mode?: number): Fd;
  unixConnect(path: string): Fd;
  socketpair(): [Fd, Fd];
  peerCred(fd: Fd): PeerCred;
  sendFds(fd: Fd, fds: Fd[], payload: Buffer): number | null;
  recvFds(fd: Fd, maxFds: number, maxBytes: number): RecvFdsResult | null;
  shutdown(fd: Fd, how: number): void;
  bridge(fd: Fd): Fd;
  uffdCreate(flags: number): Fd;
  uffdApiHandshake(fd: Fd, features: number): { features: number; ioctls: number };
  uffdRegister(fd: Fd, addr: number, len: number, mode: number): number;
  uffdUnregister(fd: Fd, addr: number, len: number): void;
  uffdCopy(fd: Fd, dst: number, src: Buffer, mode: number): number;
  uffdZeropage(fd: Fd, addr: number, len: number, mode: number): number;
  uffdWake(fd: Fd, addr: number, len: number): void;
  uffdReadEvents(fd: Fd, max: number): UffdEvent[];
  pageServerStart(memFile: string): PageServerHandle;
  pageServerAddClient(serverId: number, uffd: Fd, regions: GuestRegionUffdMapping[], connFd: Fd): PageServerClient;
  pageServerClientStats(clientId: number): PageServerClientStats;
  pageServerReapClient(clientId: number): PageServerClientStats;
  pageServerStop(serverId: number): boolean;
  clockSetRealtime(ms: number): void;
  randomAddEntropy(bytes: Buffer, reseed: boolean, device?: string): void;
  neighFlush(): number;
  tcpDestroyEstablished(): number;
  linkSetMac(ifname: string, mac: Buffer): void;
  ipv4AddrFlush(ifname: string): number;
  ipv4AddrAdd(ifname: string, address: string, prefixLength: number): void;
  ipv4DefaultRoute(ifname: string, gateway: string): void;
  testing: {
    mmapAnon(len: number): number;
    munmap(addr: number, len: number): void;
    madviseDontneed(addr: number, len: number): void;
    memRead(addr: number, len: number): Buffer;
    memWrite(addr: number, data: Buffer): void;
  };
}

const ADDON_FILE = 'shoal_native.node';
const ABI_VERSION = 1;

export class NativeAddonUnavailableError extends Error {
  constructor(
    readonly tried: string[],
    readonly causes: string[],
  ) {
    super(
      `shoal native addon (${ADDON_FILE}) is not available; build it with \`npm run build:native\` ` +
        `(or point SHOAL_NATIVE_ADDON at it). Tried: ` +
        tried.map((p, i) => `${p}${causes[i] ? ` (${causes[i]})` : ''}`).join(', '),
    );
    this.name = 'NativeAddonUnavailableError';
  }
}

/**
 * Where the addon may live, in order:
 *  1. $SHOAL_NATIVE_ADDON;
 *  2. next to this module (the guest payload ships index.js and the .node
 *     together, e.g. /run/shoal/agent/native/);
 *  3. the project's native/build/Release (this file compiles to
 *     dist/src/native/index.js; also works from src/native via ts runners);
 *  4. the fixed guest path /run/shoal/agent/native/.
 */
export function nativeAddonCandidates(): string[] {
  const out: string[] = [];
  const env = process.env['SHOAL_NATIVE_ADDON'];
  if (env) out.push(path.resolve(env));
  out.push(path.join(__dirname, ADDON_FILE));
  out.push(path.resolve(__dirname, '../../../native/build/Release', ADDON_FILE));
  out.push(path.resolve(__dirname, '../../native/build/Release', ADDON_FILE));
  out.push(path.join('/run/shoal/agent/native', ADDON_FILE));
  return [...new Set(out)];
}

let binding: NativeBinding | undefined;
let bindingPath = '';
let loadError: NativeAddonUnavailableError | undefined;

function load(): NativeBinding {
  if (binding) return binding;
  if (loadError) throw loadError;
  const tried: string[] = [];
  const causes: string[] = [];
  const explicit = process.env['SHOAL_NATIVE_ADDON'];
  for (const p of nativeAddonCandidates()) {
    tried.push(p);
    if (!fs.existsSync(p)) {
      causes.push('');
      // An explicit override that does not exist is a configuration error.
      if (explicit && p === path.resolve(explicit)) causes[causes.length - 1] = 'SHOAL_NATIVE_ADDON: not found';
      continue;
    }
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const b = require(p) as NativeBinding;
      if (b.abiVersion !== ABI_VERSION) {
        causes.push(`abiVersion ${String(b.abiVersion)}, wanted ${ABI_VERSION}: rebuild`);
        continue;
      }
      binding = b;
      bindingPath = p;
      return b;
    } catch (err) {
      causes.push(err instanceof Error ? err.message.split('\n')[0] ?? '' : String(err));
    }
  }
  loadError = new NativeAddonUnavailableError(tried, causes);
  throw loadError;
}

/** True when the addon can be loaded (never throws). */
export function isNativeAvailable(): boolean {
  try {
    load();
    return true;
  } catch {
    return false;
  }
}

/** Path of the addon that was loaded (loads it). */
export function nativeAddonPath(): string {
  load();
  return bindingPath;
}

// ---------------------------------------------------------------------------
// fds and readiness
// ---------------------------------------------------------------------------

function abortError(signal: AbortSignal): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof Error) return reason;
  const e = new Error('The operation was aborted');
  e.name = 'AbortError';
  return e;
}

function isErrno(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}

export interface WaitOptions {
  signal?: AbortSignal;
  /** Keep the event loop alive while waiting (default true). */
  ref?: boolean;
}

/**
 * Resolve when fd is readable (or hung up) / writable. Resolves with revents
 * bits: 1 readable, 2 writable, 4 peer hung up. One waiter per fd at a time.
 */
export async function waitFd(fd: Fd, what: 'readable' | 'writable', opts: WaitOptions = {}): Promise<number> {
  const b = load();
  const { signal } = opts;
  if (signal?.aborted) throw abortError(signal);
  const p = b.waitFd(fd, what === 'readable' ? 1 : 2, opts.ref ?? true);
  if (!signal) return p;
  const onAbort = (): void => {
    b.cancelWait(fd);
  };
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    return await p;
  } catch (err) {
    if (signal.aborted && isErrno(err, 'ECANCELED')) throw abortError(signal);
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

/** Close an fd created by this module (cancels a pending wait on it first). */
export function closeFd(fd: Fd): void {
  load().close(fd);
}

/** Signal that aborts after ms, combined with an optional outer signal. */
function withTimeout(signal: AbortSignal | undefined, timeoutMs: number | undefined): AbortSignal | undefined {
  if (timeoutMs === undefined) return signal;
  const t = AbortSignal.timeout(timeoutMs);
  if (!signal) return t;
  const c = new AbortController();
  const fwd = (s: AbortSignal) => () => c.abort(s.reason);
  if (signal.aborted) c.abort(signal.reason);
  signal.addEventListener('abort', fwd(signal), { once: true });
  t.addEventListener('abort', fwd(t), { once: true });
  return c.signal;
}

// ---------------------------------------------------------------------------
// sockets: AF_VSOCK, AF_UNIX, accept
// ---------------------------------------------------------------------------

export interface AcceptOptions {
  signal?: AbortSignal;
  /** Keep the event loop alive while waiting (default true, like a listening net.Server). */
  ref?: boolean;
}

/** accept() on any listening socket from this module (vsock or unix); resolves with a non-blocking fd. */
export async function acceptFd(listenFd: Fd, opts: AcceptOptions = {}): Promise<Fd> {
  const b = load();
  for (;;) {
    const fd = b.accept(listenFd);
    if (fd !== null) return fd;
    await waitFd(listenFd, 'readable', opts);
  }
}

/** Listen on AF_VSOCK `port` (any local CID unless given). Returns the listening fd. */
export function vsockListen(port: number, opts: { backlog?: number; cid?: number } = {}): Fd {
  return load().vsockListen(port, opts.backlog ?? 128, opts.cid ?? VMADDR_CID_ANY);
}

/** Accept one AF_VSOCK connection. Use vsockStream()/vsockBridge() to talk to it from Node. */
export function vsockAccept(listenFd: Fd, opts: AcceptOptions = {}): Promise<Fd> {
  return acceptFd(listenFd, opts);
}

/**
 * Connect to (cid, port) over AF_VSOCK. Non-blocking connect + wait for
 * writability + SO_ERROR. The kernel's own vsock connect timeout is 2 s;
 * timeoutMs/signal can cut it shorter.
 */
export async function vsockConnect(
  cid: number,
  port: number,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<Fd> {
  const b = load();
  const fd = b.vsockConnectStart(cid, port);
  try {
    await waitFd(fd, 'writable', { signal: withTimeout(opts.signal, opts.timeoutMs) });
    const err = b.socketError(fd);
    if (err !== 0) {
      const e = new Error(`connect(AF_VSOCK ${cid}:${port}) failed: ${errnoName(err)}`) as NodeJS.ErrnoException;
      e.errno = err;
      e.code = errnoName(err);
      e.syscall = 'connect';
      throw e;
    }
    return fd;
  } catch (err) {
    b.close(fd);
    throw err;
  }
}

/** This machine's vsock CID (IOCTL_VM_SOCKETS_GET_LOCAL_CID on /dev/vsock). */
export function vsockLocalCid(): number {
  return load().vsockLocalCid();
}

/**
 * Make a stream socket (AF_VSOCK, or anything libuv cannot wrap) usable from
 * Node: returns the JS end of an AF_UNIX socketpair whose other end a native
 * pump thread connects to `fd` in both directions, with half-close (EOF ->
 * shutdown(SHUT_WR)) propagated and both ends closed on error. Takes
 * ownership of `fd`. Wrap the result with socketFromFd().
 */
export function vsockBridge(fd: Fd): Fd {
  return load().bridge(fd);
}

/** A net.Socket over an AF_UNIX stream fd (e.g. from vsockBridge or socketPair). Takes ownership. */
export function socketFromFd(fd: Fd): net.Socket {
  return new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true });
}

/** vsockBridge + socketFromFd: a Duplex for an accepted/connected vsock fd. */
export function vsockStream(fd: Fd): net.Socket {
  return socketFromFd(vsockBridge(fd));
}

/** Listen on a Unix stream socket at path (mode 0600 by default). Non-blocking; use acceptFd(). */
export function unixListen(socketPath: string, opts: { backlog?: number; mode?: number } = {}): Fd {
  return load().unixListen(socketPath, opts.backlog ?? 128, opts.mode ?? 0o600);
}

/** Connect to a Unix stream socket; returns a non-blocking fd. */
export function unixConnect(socketPath: string): Fd {
  return load().unixConnect(socketPath);
}

/** An AF_UNIX stream socketpair, both ends non-blocking and close-on-exec. */
export function socketPair(): [Fd, Fd] {
  return load().socketpair();
}

/** SO_PEERCRED of a connected Unix socket. */
export function peerCred(fd: Fd): PeerCred {
  return load().peerCred(fd);
}

/** shutdown(2): 'read' | 'write' | 'both'. */
export function shutdownFd(fd: Fd, how: 'read' | 'write' | 'both'): void {
  load().shutdown(fd, how === 'read' ? 0 : how === 'write' ? 1 : 2);
}

// ---------------------------------------------------------------------------
// SCM_RIGHTS
// ---------------------------------------------------------------------------

/**
 * Send `payload` with `fds` attached (SCM_RIGHTS) on a Unix stream socket.
 * The fds travel with the first chunk; the rest of a partially written
 * payload follows without fds. Waits (without blocking) while the socket is
 * full. The caller keeps its own copies of the fds.
 */
export async function sendFds(
  fd: Fd,
  fds: Fd[],
  payload: Buffer,
  opts: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<void> {
  const b = load();
  const signal = withTimeout(opts.signal, opts.timeoutMs);
  let rest = payload;
  let pendingFds = fds;
  while (rest.length > 0) {
    const n = b.sendFds(fd, pendingFds, rest);
    if (n === null) {
      await waitFd(fd, 'writable', { signal });
      continue;
    }
    pendingFds = [];
    rest = rest.subarray(n);
  }
}

/**
 * Receive one message (up to maxBytes) and any fds attached (up to maxFds).
 * Resolves on the first data, fds or EOF; waits without blocking otherwise.
 */
export async function recvFds(
  fd: Fd,
  maxFds: number,
  maxBytes: number,
  opts: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<RecvFdsResult> {
  const b = load();
  const signal = withTimeout(opts.signal, opts.timeoutMs);
  for (;;) {
    const r = b.recvFds(fd, maxFds, maxBytes);
    if (r !== null) return r;
    await waitFd(fd, 'readable', { signal });
  }
}

/** Non-blocking single attempts (null = would block), for callers with their own loop. */
export function trySendFds(fd: Fd, fds: Fd[], payload: Buffer): number | null {
  return load().sendFds(fd, fds, payload);
}
export function tryRecvFds(fd: Fd, maxFds: number, maxBytes: number): RecvFdsResult | null {
  return load().recvFds(fd, maxFds, maxBytes);
}

// ---------------------------------------------------------------------------
// userfaultfd
// ---------------------------------------------------------------------------

/**
 * Create a userfaultfd (userfaultfd(2), falling back to /dev/userfaultfd on
 * EPERM). Default flags O_CLOEXEC|O_NONBLOCK, as Firecracker uses.
 */
export function uffdCreate(flags: number = O_CLOEXEC | O_NONBLOCK): Fd {
  return load().uffdCreate(flags);
}

/** UFFDIO_API: must be the first ioctl; enables `features` (e.g. UFFD_FEATURE_EVENT_REMOVE). */
export function uffdApiHandshake(fd: Fd, features = 0): { features: number; ioctls: number } {
  return load().uffdApiHandshake(fd, features);
}

/** UFFDIO_REGISTER [addr, addr+len) (MISSING mode by default); returns the ioctl bitmask for the range. */
export function uffdRegister(fd: Fd, addr: number, len: number, mode = UFFDIO_REGISTER_MODE_MISSING): number {
  return load().uffdRegister(fd, addr, len, mode);
}

export function uffdUnregister(fd: Fd, addr: number, len: number): void {
  load().uffdUnregister(fd, addr, len);
}

/** UFFDIO_COPY src into the missing pages at dst (len = src.length, page multiple). Returns bytes copied. */
export function uffdCopy(fd: Fd, dst: number, src: Buffer, mode = 0): number {
  return load().uffdCopy(fd, dst, src, mode);
}

/** UFFDIO_ZEROPAGE [addr, addr+len). Returns bytes zeroed. */
export function uffdZeropage(fd: Fd, addr: number, len: number, mode = 0): number {
  return load().uffdZeropage(fd, addr, len, mode);
}

/** UFFDIO_WAKE threads waiting on [addr, addr+len). */
export function uffdWake(fd: Fd, addr: number, len: number): void {
  load().uffdWake(fd, addr, len);
}

/** Read pending events from an O_NONBLOCK uffd ([] if none); await waitFd(fd, 'readable') for more. */
export function uffdReadEvents(fd: Fd, max = 64): UffdEvent[] {
  return load().uffdReadEvents(fd, max);
}

// ---------------------------------------------------------------------------
// native page server (see native/src/pageserver.cc)
// ---------------------------------------------------------------------------

/** Map a snapshot memory file (read-only, MAP_PRIVATE) to serve clones' page faults from. */
export function pageServerStart(memFile: string): PageServerHandle {
  return load().pageServerStart(memFile);
}

/**
 * Start serving one clone: a native thread answers faults on `uffd` for
 * `regions` from the server's mapping. Takes ownership of `uffd` and of
 * `connFd` (the clone's handshake socket, whose hangup tells the thread the
 * clone died), even when it throws.
 */
export function pageServerAddClient(
  server: PageServerHandle,
  uffd: Fd,
  regions: GuestRegionUffdMapping[],
  opts: { connFd?: Fd } = {},
): PageServerClient {
  return load().pageServerAddClient(server.id, uffd, regions, opts.connFd ?? -1);
}

/** Live counters of one client (also valid after it exited, until reaped). */
export function pageServerClientStats(client: PageServerClient): PageServerClientStats {
  return load().pageServerClientStats(client.id);
}

/**
 * Resolve with the final stats when the client's thread exits on its own
 * (clone died) and reap it. `ref: false` lets the process exit meanwhile.
 */
export async function pageServerWaitClient(
  client: PageServerClient,
  opts: WaitOptions = {},
): Promise<PageServerClientStats> {
  const b = load();
  while (b.pageServerClientStats(client.id).running) {
    await waitFd(client.doneFd, 'readable', opts);
  }
  return b.pageServerReapClient(client.id);
}

/** Stop one client now (if running), join its thread and return its final stats. */
export function pageServerStopClient(client: PageServerClient): PageServerClientStats {
  const b = load();
  b.cancelWait(client.doneFd);
  return b.pageServerReapClient(client.id);
}

/** Stop all clients of a server and release its mapping. Cancel pageServerWaitClient() waits first. */
export function pageServerStop(server: PageServerHandle): void {
  load().pageServerStop(server.id);
}

// ---------------------------------------------------------------------------
// a clone's recovery in the guest (src/agent/recovery.ts): each call is what a
// process did before (`date -s`, perl's ioctl, `ip`, `ss -K`), done in-process
// because every process start costs tens of ms in an emulated guest.
// ---------------------------------------------------------------------------

/** clock_settime(CLOCK_REALTIME) to ms since the epoch (CAP_SYS_TIME). Refuses times outside 2000..2200. */
export function clockSetRealtime(ms: number): void {
  load().clockSetRealtime(ms);
}

/**
 * Mix bytes into the kernel's input pool, crediting 8 bits each (RNDADDENTROPY, CAP_SYS_ADMIN),
 * and with reseed make the crng use them at once (RNDRESEEDCRNG). 1 to 1024 bytes.
 */
export function randomAddEntropy(bytes: Buffer, opts: { reseed: boolean; device?: string }): void {
  load().randomAddEntropy(bytes, opts.reseed, opts.device);
}

/** `ip neigh flush all`: deletes IPv4/IPv6 neighbours that are neither permanent nor NOARP; returns how many. */
export function neighFlush(): number {
  return load().neighFlush();
}

/** `ss -K state established` for TCP over IPv4 and IPv6 (SOCK_DESTROY); returns how many were aborted. */
export function tcpDestroyEstablished(): number {
  return load().tcpDestroyEstablished();
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

/** `ip link set IFNAME address MAC` (MAC as aa:bb:cc:dd:ee:ff). */
export function linkSetMac(ifname: string, mac: string): void {
  if (!MAC.test(mac)) throw new RangeError(`not a MAC address: ${mac}`);
  load().linkSetMac(ifname, Buffer.from(mac.replace(/:/g, ''), 'hex'));
}

/** `ip -4 addr flush dev IFNAME`; returns how many addresses were deleted. */
export function ipv4AddrFlush(ifname: string): number {
  return load().ipv4AddrFlush(ifname);
}

/** `ip addr add ADDRESS/PREFIX dev IFNAME`. */
export function ipv4AddrAdd(ifname: string, cidr: string): void {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/.exec(cidr);
  if (!m) throw new RangeError(`not an IPv4 ADDRESS/PREFIX: ${cidr}`);
  load().ipv4AddrAdd(ifname, m[1]!, Number(m[2]));
}

/** `ip route replace default via GATEWAY dev IFNAME`. */
export function ipv4DefaultRoute(ifname: string, gateway: string): void {
  load().ipv4DefaultRoute(ifname, gateway);
}

// ---------------------------------------------------------------------------
// test-only helpers
// ---------------------------------------------------------------------------

/**
 * TEST ONLY: raw memory access for playing Firecracker's side of the uffd
 * protocol in tests. Reading a registered, missing page blocks the calling
 * thread until a page server resolves the fault.
 */
export const testOnly = {
  mmapAnon: (len: number): number => load().testing.mmapAnon(len),
  munmap: (addr: number, len: number): void => load().testing.munmap(addr, len),
  madviseDontneed: (addr: number, len: number): void => load().testing.madviseDontneed(addr, len),
  memRead: (addr: number, len: number): Buffer => load().testing.memRead(addr, len),
  memWrite: (addr: number, data: Buffer): void => load().testing.memWrite(addr, data),
};

// ---------------------------------------------------------------------------

function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(os.constants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}
