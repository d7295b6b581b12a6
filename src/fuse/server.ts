/**
 * The host side of `--map`: answers raw FUSE requests from an untrusted guest by performing
 * them on one host directory (the root). See docs/fuse.md.
 *
 * Confinement rests on three rules, applied to every request:
 *  1. A guest-supplied name is a single path component: never empty, never containing '/',
 *     never '.' or '..'.
 *  2. The directory a request works in is opened first (O_PATH|O_DIRECTORY|O_NOFOLLOW), the
 *     opened directory's real path (/proc/self/fd) is checked to be the root or under it, and
 *     its (dev, ino) must be the node the kernel named. The operation then goes through
 *     /proc/self/fd/N/NAME, so it happens in exactly that directory even if paths change
 *     meanwhile, and the last component is never followed (lstat, O_NOFOLLOW, lchown, lutimes,
 *     chmod through an O_PATH descriptor).
 *  3. Every descriptor opened on a guest's behalf is checked again through /proc/self/fd.
 *
 * Requests are handled synchronously, one at a time, in arrival order: no request of this
 * guest can change the tree between another request's check and its use.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { HandleBudget } from './handle-budget';
import * as P from './protocol';

export interface FuseServerOptions {
  /**
   * The open handles this server may hold, shared with the VM's other maps (default: a budget of
   * its own of MAX_OPEN_HANDLES_PER_VM). Past it OPEN, CREATE and OPENDIR fail with EMFILE.
   */
  handles?: HandleBudget;
  /** Refuse every change with EROFS, whatever the guest's mount flags say. */
  readOnly: boolean;
  /** How long the guest kernel may cache a name lookup (default 1 s). */
  entryTimeoutSeconds?: number;
  /** How long the guest kernel may cache attributes (default 1 s). */
  attrTimeoutSeconds?: number;
  /**
   * Let the guest kernel cache writes (FUSE_WRITEBACK_CACHE; default true, never when
   * readOnly). Faster, but while the guest caches a file it trusts its own size and mtime
   * over the host's, so changes made on the host to that file show up late.
   */
  writebackCache?: boolean;
  /**
   * Keep set-user-ID/set-group-ID bits on files the guest creates or chmods (default false:
   * they are cleared, so a guest cannot plant a setuid executable in a host directory).
   */
  allowSetid?: boolean;
}

/** What we tell the kernel it may send in one WRITE, and so the largest READ we expect. */
export const MAX_WRITE = 1024 * 1024;
export const MAX_PAGES = 256;
/** A READ larger than this is cut short (the kernel never asks for more than max_pages pages). */
const MAX_READ = 16 * 1024 * 1024;

const E = os.constants.errno;
const {
  O_RDONLY, O_WRONLY, O_RDWR, O_APPEND, O_TRUNC, O_CREAT, O_EXCL, O_NOFOLLOW, O_NONBLOCK, O_DIRECTORY,
  O_SYNC, O_DSYNC, S_IFMT, S_IFREG, S_IFDIR, S_IFIFO, S_IFSOCK, S_IFCHR, S_IFBLK, W_OK, X_OK,
} = fs.constants;
/** Linux's O_PATH; Node does not export it. Opens a name without reading, writing or following it. */
const O_PATH = 0o10000000;
const O_ACCMODE = 3;
const S_ISUID = 0o4000;
const S_ISGID = 0o2000;
const DT_DIR = S_IFDIR >> 12;

/** A request failed with this errno; becomes the reply's error. */
class FuseError extends Error {
  constructor(readonly errno: number, message: string) {
    super(message);
    this.name = 'FuseError';
  }
}

function fail(code: keyof typeof E, why: string): never {
  throw new FuseError(E[code], `${code}: ${why}`);
}

function errnoOf(err: unknown): number {
  if (err instanceof FuseError) return err.errno;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code && code in E) return E[code as keyof typeof E];
  // Node's own argument checks (ERR_OUT_OF_RANGE and friends) and short bodies (RangeError) mean
  // the guest sent something malformed.
  if (err instanceof RangeError || (typeof code === 'string' && code.startsWith('ERR_'))) return E.EINVAL;
  return E.EIO;
}

/** One host inode the guest kernel knows by a node id. */
interface Inode {
  readonly nodeid: number;
  readonly dev: bigint;
  readonly ino: bigint;
  /** S_IFMT bits, to notice an inode number reused by a different kind of file. */
  readonly type: number;
  /** A path (latin1-encoded raw bytes, relative to root, '' for root) that last reached it; null if none is known. */
  rel: string | null;
  /** Lookups the kernel holds; it returns them with FORGET. */
  lookups: number;
}

type Handle =
  | { kind: 'file'; fd: number; nodeid: number }
  | { kind: 'dir'; fd: number; nodeid: number; dev: bigint; ino: bigint; entries: Buffer[] | null };

type Body = Buffer[];
type SetattrValue = P.StructValue<typeof P.SetattrIn.fields>;
/** An op that builds the whole reply itself (READ, to read straight into the reply). */
class WholeReply {
  constructor(readonly message: Buffer) {}
}
type OpResult = Body | WholeReply | null;

const NO_REPLY: ReadonlySet<number> = new Set([P.Opcode.FORGET, P.Opcode.BATCH_FORGET, P.Opcode.INTERRUPT]);
const DOT = Buffer.from('.');
const DOTDOT = Buffer.from('..');

export class FuseServer {
  private readonly rootPath: Buffer;
  private readonly rootPrefix: Buffer;
  private readonly readOnly: boolean;
  private readonly entryValid: P.Timeout;
  private readonly attrValid: P.Timeout;
  private readonly wantWritebackCache: boolean;
  private readonly allowSetid: boolean;
  private readonly runningAsRoot = process.getuid?.() === 0;

  private readonly nodes = new Map<number, Inode>();
  private readonly nodesByInode = new Map<string, Inode>();
  private nextNodeid = P.FUSE_ROOT_ID + 1;
  private readonly handles = new Map<number, Handle>();
  private readonly budget: HandleBudget;
  private nextFh = 1;

  private initialized = false;
  private writebackCache = false;

  constructor(root: string, options: FuseServerOptions) {
    const real = fs.realpathSync.native(root);
    const st = fs.lstatSync(real, { bigint: true });
    if (!st.isDirectory()) throw new Error(`cannot serve ${root} over FUSE: not a directory`);
    this.rootPath = Buffer.from(real);
    this.rootPrefix = Buffer.from(real.endsWith('/') ? real : `${real}/`);
    this.readOnly = options.readOnly;
    this.entryValid = P.timeoutFromSeconds(options.entryTimeoutSeconds ?? 1);
    this.attrValid = P.timeoutFromSeconds(options.attrTimeoutSeconds ?? 1);
    this.wantWritebackCache = options.writebackCache ?? true;
    this.allowSetid = options.allowSetid ?? false;
    this.budget = options.handles ?? new HandleBudget();
    const rootNode: Inode = { nodeid: P.FUSE_ROOT_ID, dev: st.dev, ino: st.ino, type: S_IFDIR, rel: '', lookups: 1 };
    this.nodes.set(rootNode.nodeid, rootNode);
    this.nodesByInode.set(inodeKey(st), rootNode);
  }

  /**
   * Answers one whole request (fuse_in_header first). Returns the whole reply, or null for
   * requests that get none (FORGET, BATCH_FORGET, INTERRUPT) and for a message too short to
   * have a header to answer. Never throws: failures become error replies.
   */
  handle(request: Buffer): Buffer | null {
    if (request.length < P.InHeader.size) return null;
    const header = P.InHeader.decode(request);
    const quiet = NO_REPLY.has(header.opcode);
    try {
      if (header.len !== request.length) fail('EINVAL', `request length ${header.len} != ${request.length}`);
      const result = this.dispatch(header, request.subarray(P.InHeader.size));
      if (quiet || result === null) return null;
      if (result instanceof WholeReply) return result.message;
      return P.encodeReply(header.unique, ...result);
    } catch (err) {
      return quiet ? null : P.encodeErrorReply(header.unique, errnoOf(err));
    }
  }

  /** Closes every open host descriptor. The server answers nothing useful afterwards. */
  close(): void {
    for (const handle of this.handles.values()) closeQuietly(handle.fd);
    this.budget.give(this.handles.size);
    this.handles.clear();
  }

  // -------------------------------------------------------------------------------------------

  private dispatch(h: P.InHeaderValue, body: Buffer): OpResult {
    const O = P.Opcode;
    if (h.opcode === O.INIT) return this.init(body);
    if (!this.initialized) fail('EIO', 'request before INIT');
    switch (h.opcode) {
      case O.DESTROY: this.close(); return [];
      case O.FORGET: this.forget(h.nodeid, P.ForgetIn.decode(body).nlookup); return null;
      case O.BATCH_FORGET: this.batchForget(body); return null;
      case O.INTERRUPT: return null; // requests are answered in order, so the interrupted one still gets its reply
      case O.LOOKUP: return this.lookup(h, body);
      case O.GETATTR: return this.getattr(h, body);
      case O.SETATTR: return this.setattr(h, body);
      case O.READLINK: return this.readlink(h);
      case O.SYMLINK: return this.symlink(h, body);
      case O.MKNOD: return this.mknod(h, body);
      case O.MKDIR: return this.mkdir(h, body);
      case O.UNLINK: return this.remove(h, body, false);
      case O.RMDIR: return this.remove(h, body, true);
      case O.RENAME: return this.rename(h, body, P.RenameIn.decode(body).newdir, 0, P.RenameIn.size);
      case O.RENAME2: {
        const r = P.Rename2In.decode(body);
        return this.rename(h, body, r.newdir, r.flags, P.Rename2In.size);
      }
      case O.LINK: return this.link(h, body);
      case O.OPEN: return this.open(h, body);
      case O.CREATE: return this.create(h, body);
      case O.READ: return this.read(h, body);
      case O.WRITE: return this.write(body);
      case O.FLUSH: this.fileHandle(P.FlushIn.decode(body).fh); return [];
      case O.RELEASE:
      case O.RELEASEDIR: this.release(P.ReleaseIn.decode(body).fh); return [];
      case O.FSYNC:
      case O.FSYNCDIR: return this.fsync(body);
      case O.OPENDIR: return this.opendir(h);
      case O.READDIR: return this.readdir(body, false);
      case O.READDIRPLUS: return this.readdir(body, true);
      case O.STATFS: return this.statfs();
      case O.ACCESS: return this.access(h, body);
      case O.FALLOCATE: return this.fallocate(body);
      case O.SETXATTR:
      case O.REMOVEXATTR:
        this.assertWritable();
        fail('ENOSYS', 'extended attributes are not supported');
      // LSEEK falls through to ENOSYS on purpose: the kernel then answers SEEK_DATA/SEEK_HOLE
      // itself, treating the whole file as data, which is correct if not sparse-aware.
      default:
        fail('ENOSYS', `${P.opcodeName(h.opcode)} is not supported`);
    }
  }

  private init(body: Buffer): Body {
    // Kernels before 7.36 send only the first 16 bytes of fuse_init_in.
    const padded = body.length >= P.InitIn.size ? body : Buffer.concat([body, Buffer.alloc(P.InitIn.size - body.length)]);
    const kernel = P.InitIn.decode(padded);
    if (kernel.major < P.FUSE_KERNEL_VERSION) fail('EPROTO', `kernel FUSE ${kernel.major}.${kernel.minor} is too old`);
    if (kernel.major > P.FUSE_KERNEL_VERSION) {
      // The kernel retries INIT with our major version.
      return [P.InitOut.encode({ major: P.FUSE_KERNEL_VERSION, minor: P.FUSE_KERNEL_MINOR_VERSION })];
    }
    if (kernel.minor < P.FUSE_MIN_KERNEL_MINOR_VERSION) fail('EPROTO', `kernel FUSE 7.${kernel.minor} is too old`);
    const F = P.InitFlag;
    let wanted =
      F.ASYNC_READ | F.BIG_WRITES | F.ATOMIC_O_TRUNC | F.PARALLEL_DIROPS | F.AUTO_INVAL_DATA |
      F.DO_READDIRPLUS | F.READDIRPLUS_AUTO | F.MAX_PAGES;
    if (!this.readOnly && this.wantWritebackCache) wanted |= F.WRITEBACK_CACHE;
    const flags = (wanted & kernel.flags) >>> 0;
    this.writebackCache = (flags & F.WRITEBACK_CACHE) !== 0;
    this.initialized = true;
    return [
      P.InitOut.encode({
        major: P.FUSE_KERNEL_VERSION,
        minor: Math.min(kernel.minor, P.FUSE_KERNEL_MINOR_VERSION),
        max_readahead: kernel.max_readahead,
        flags,
        max_write: MAX_WRITE,
        time_gran: 1,
        max_pages: MAX_PAGES,
      }),
    ];
  }

  // --- node ids --------------------------------------------------------------------------------

  private node(nodeid: bigint): Inode {
    const node = this.nodes.get(Number(nodeid));
    if (!node) fail('ESTALE', `unknown node id ${nodeid}`);
    return node;
  }

  /** The node for the inode `st` describes, reached at `rel`; counts one kernel lookup. */
  private remember(rel: string, st: fs.BigIntStats): Inode {
    const key = inodeKey(st);
    const type = Number(st.mode) & S_IFMT;
    let node = this.nodesByInode.get(key);
    if (node && node.type !== type) {
      // The inode number was reused by a different file: the old node is gone on the host.
      node.rel = null;
      node = undefined;
    }
    if (!node) {
      node = { nodeid: this.nextNodeid++, dev: st.dev, ino: st.ino, type, rel, lookups: 0 };
      this.nodes.set(node.nodeid, node);
      this.nodesByInode.set(key, node);
    } else if (node.nodeid !== P.FUSE_ROOT_ID) {
      node.rel = rel;
    }
    node.lookups++;
    return node;
  }

  private forget(nodeid: bigint, count: bigint): void {
    const node = this.nodes.get(Number(nodeid));
    if (!node || node.nodeid === P.FUSE_ROOT_ID) return;
    node.lookups -= Number(count);
    if (node.lookups > 0) return;
    this.nodes.delete(node.nodeid);
    const key = `${node.dev}:${node.ino}`;
    if (this.nodesByInode.get(key) === node) this.nodesByInode.delete(key);
  }

  private batchForget(body: Buffer): void {
    const { count } = P.BatchForgetIn.decode(body);
    for (let i = 0; i < count; i++) {
      const one = P.ForgetOne.decode(body, P.BatchForgetIn.size + i * P.ForgetOne.size);
      this.forget(one.nodeid, one.nlookup);
    }
  }

  /** After `st` lost the name `rel`: forget the inode if that was its last name, else forget that path. */
  private removed(rel: string, st: fs.BigIntStats): void {
    const key = inodeKey(st);
    const node = this.nodesByInode.get(key);
    if (!node) return;
    if (st.isDirectory() || st.nlink <= 1n) {
      this.nodesByInode.delete(key);
      node.rel = null;
    } else if (node.rel === rel) {
      node.rel = null; // another name still reaches it; the next LOOKUP of that name restores a path
    }
  }

  private renamed(fromRel: string, toRel: string): void {
    const prefix = `${fromRel}/`;
    for (const node of this.nodes.values()) {
      if (node.rel === fromRel) node.rel = toRel;
      else if (node.rel !== null && node.rel.startsWith(prefix)) node.rel = toRel + node.rel.slice(fromRel.length);
    }
  }

  // --- confinement -----------------------------------------------------------------------------

  private hostPath(rel: string): Buffer {
    return rel === '' ? this.rootPath : Buffer.concat([this.rootPrefix, Buffer.from(rel, 'latin1')]);
  }

  /** True when the descriptor's real path is the root or under it. */
  private isInsideRoot(fd: number): boolean {
    const real = fs.readlinkSync(`/proc/self/fd/${fd}`, { encoding: 'buffer' });
    return real.equals(this.rootPath) || (real.length > this.rootPrefix.length && real.subarray(0, this.rootPrefix.length).equals(this.rootPrefix));
  }

  /** open(2), then refuse (EACCES) a descriptor that ended up outside the root. */
  private openConfined(path: Buffer, flags: number, mode?: number): number {
    const fd = fs.openSync(path, flags, mode);
    try {
      if (!this.isInsideRoot(fd)) fail('EACCES', 'path leads outside the mapped directory');
      return fd;
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
  }

  /**
   * Runs fn in the directory `node`, verified: fn gets "/proc/self/fd/N/" (append a checked
   * name to use it) and the directory's stat.
   */
  private inDirectory<T>(node: Inode, fn: (dir: Buffer, dirStat: fs.BigIntStats, dirFd: number) => T): T {
    if (node.rel === null) fail('ENOENT', `node ${node.nodeid} has no known path`);
    const fd = this.openConfined(this.hostPath(node.rel), O_PATH | O_DIRECTORY | O_NOFOLLOW);
    try {
      const st = fs.fstatSync(fd, { bigint: true });
      if (st.dev !== node.dev || st.ino !== node.ino) fail('ENOENT', `directory of node ${node.nodeid} was replaced`);
      return fn(procDir(fd), st, fd);
    } finally {
      fs.closeSync(fd);
    }
  }

  /** Runs fn on the node itself, verified: fn gets a path whose last component must not be followed, and its lstat. */
  private atNode<T>(node: Inode, fn: (path: Buffer, st: fs.BigIntStats) => T): T {
    if (node.nodeid === P.FUSE_ROOT_ID) {
      const st = fs.lstatSync(this.rootPath, { bigint: true });
      if (st.dev !== node.dev || st.ino !== node.ino) fail('ENOENT', 'the mapped directory was replaced');
      return fn(this.rootPath, st);
    }
    if (node.rel === null) fail('ENOENT', `node ${node.nodeid} has no known path`);
    const slash = node.rel.lastIndexOf('/');
    const parentRel = slash < 0 ? '' : node.rel.slice(0, slash);
    const name = Buffer.from(node.rel.slice(slash + 1), 'latin1');
    const fd = this.openConfined(this.hostPath(parentRel), O_PATH | O_DIRECTORY | O_NOFOLLOW);
    try {
      const path = Buffer.concat([procDir(fd), name]);
      const st = fs.lstatSync(path, { bigint: true });
      if (st.dev !== node.dev || st.ino !== node.ino) fail('ENOENT', `node ${node.nodeid} was replaced`);
      return fn(path, st);
    } finally {
      fs.closeSync(fd);
    }
  }

  private assertWritable(): void {
    if (this.readOnly) fail('EROFS', 'the mapped directory is read-only');
  }

  // --- metadata --------------------------------------------------------------------------------

  private entry(node: Inode, st: fs.BigIntStats): P.EntryValue {
    return { nodeid: BigInt(node.nodeid), entryValid: this.entryValid, attrValid: this.attrValid, attr: toAttr(st) };
  }

  private lookup(h: P.InHeaderValue, body: Buffer): Body {
    const name = checkedName(P.readNames(body, 0, 1)[0]!);
    const parent = this.node(h.nodeid);
    return this.inDirectory(parent, (dir) => {
      const st = fs.lstatSync(Buffer.concat([dir, name]), { bigint: true });
      return [P.encodeEntryOut(this.entry(this.remember(childRel(parent, name), st), st))];
    });
  }

  private getattr(h: P.InHeaderValue, body: Buffer): Body {
    const args = P.GetattrIn.decode(body);
    const node = this.node(h.nodeid);
    const handle = args.getattr_flags & P.GETATTR_FH ? this.handles.get(Number(args.fh)) : this.openFileOfUnnamed(node);
    const st = handle ? fs.fstatSync(handle.fd, { bigint: true }) : this.atNode(node, (_path, s) => s);
    return [P.encodeAttrOut(this.attrValid, toAttr(st))];
  }

  private setattr(h: P.InHeaderValue, body: Buffer): Body {
    this.assertWritable();
    const a = P.SetattrIn.decode(body);
    const node = this.node(h.nodeid);
    const handle = a.valid & P.SetattrValid.FH ? this.handles.get(Number(a.fh)) : this.openFileOfUnnamed(node);
    // Through the open file when the kernel names one: that works even after the last unlink.
    const st =
      handle?.kind === 'file'
        ? this.applyAttributes(a, { fd: handle.fd }, fs.fstatSync(handle.fd, { bigint: true }))
        : this.atNode(node, (path, st) => this.applyAttributes(a, { path }, st));
    return [P.encodeAttrOut(this.attrValid, toAttr(st))];
  }

  private applyAttributes(a: SetattrValue, target: { fd: number } | { path: Buffer }, st: fs.BigIntStats): fs.BigIntStats {
    const V = P.SetattrValid;
    const fd = 'fd' in target ? target.fd : undefined;
    const path = 'path' in target ? target.path : undefined;
    // Owner before mode: chown clears set-id bits that the chmod may then want.
    if (a.valid & (V.UID | V.GID)) {
      const uid = a.valid & V.UID ? a.uid : -1;
      const gid = a.valid & V.GID ? a.gid : -1;
      if (fd !== undefined) fs.fchownSync(fd, uid, gid);
      else fs.lchownSync(path!, uid, gid);
    }
    if (a.valid & V.MODE) {
      if (fd !== undefined) fs.fchmodSync(fd, this.permittedMode(a.mode, Number(st.mode) & S_IFMT));
      else this.chmodNoFollow(path!, st, a.mode);
    }
    if (a.valid & V.SIZE) {
      if (fd !== undefined) fs.ftruncateSync(fd, safeNumber(a.size));
      else this.truncateNoFollow(path!, st, a.size);
    }
    if (a.valid & (V.ATIME | V.MTIME | V.ATIME_NOW | V.MTIME_NOW)) {
      // Node takes times as float seconds: sub-microsecond digits may be rounded.
      const now = Date.now() / 1000;
      const atime = a.valid & V.ATIME_NOW ? now : a.valid & V.ATIME ? seconds(a.atime, a.atimensec) : nsToSeconds(st.atimeNs);
      const mtime = a.valid & V.MTIME_NOW ? now : a.valid & V.MTIME ? seconds(a.mtime, a.mtimensec) : nsToSeconds(st.mtimeNs);
      if (fd !== undefined) fs.futimesSync(fd, atime, mtime);
      else fs.lutimesSync(path!, atime, mtime);
    }
    return fd !== undefined ? fs.fstatSync(fd, { bigint: true }) : fs.lstatSync(path!, { bigint: true });
  }

  /** chmod that cannot follow a symlink: through an O_PATH descriptor of the file itself. */
  private chmodNoFollow(path: Buffer, st: fs.BigIntStats, mode: number): void {
    if (st.isSymbolicLink()) fail('EOPNOTSUPP', 'symbolic links have no mode on Linux');
    const fd = this.openConfined(path, O_PATH | O_NOFOLLOW);
    try {
      const now = fs.fstatSync(fd, { bigint: true });
      if (now.dev !== st.dev || now.ino !== st.ino) fail('ENOENT', 'file was replaced');
      fs.chmodSync(`/proc/self/fd/${fd}`, this.permittedMode(mode, Number(st.mode) & S_IFMT));
    } finally {
      fs.closeSync(fd);
    }
  }

  private truncateNoFollow(path: Buffer, st: fs.BigIntStats, size: bigint): void {
    if (st.isDirectory()) fail('EISDIR', 'cannot truncate a directory');
    if (!st.isFile()) fail('EINVAL', 'can only truncate regular files');
    const fd = this.openRegular(path, O_WRONLY, st);
    try {
      fs.ftruncateSync(fd, safeNumber(size));
    } finally {
      fs.closeSync(fd);
    }
  }

  /** The mode bits we let the guest set: permissions, sticky, and set-id only where harmless or allowed. */
  private permittedMode(mode: number, type: number): number {
    const bits = mode & 0o7777;
    return this.allowSetid || type === S_IFDIR ? bits : bits & ~(S_ISUID | S_ISGID);
  }

  private readlink(h: P.InHeaderValue): Body {
    return this.atNode(this.node(h.nodeid), (path, st) => {
      if (!st.isSymbolicLink()) fail('EINVAL', 'not a symbolic link');
      return [fs.readlinkSync(path, { encoding: 'buffer' })];
    });
  }

  private statfs(): Body {
    const s = fs.statfsSync(this.rootPath, { bigint: true });
    return [
      P.StatfsOut.encode({
        blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree,
        bsize: Number(s.bsize), frsize: Number(s.bsize), namelen: 255,
      }),
    ];
  }

  /** Only reached without default_permissions: a plain owner/group/other check on the guest's ids. */
  private access(h: P.InHeaderValue, body: Buffer): Body {
    const { mask } = P.AccessIn.decode(body);
    this.atNode(this.node(h.nodeid), (_path, st) => {
      if (mask & W_OK) this.assertWritable();
      const mode = Number(st.mode);
      if (h.uid === 0) {
        if (mask & X_OK && !st.isDirectory() && (mode & 0o111) === 0) fail('EACCES', 'not executable');
        return;
      }
      const bits = h.uid === Number(st.uid) ? mode >> 6 : h.gid === Number(st.gid) ? mode >> 3 : mode;
      if ((bits & mask & 7) !== (mask & 7)) fail('EACCES', 'permission denied');
    });
    return [];
  }

  // --- names -----------------------------------------------------------------------------------

  /** Gives a new object to the guest's caller, as the host would had the caller created it. */
  private ownNew(path: Buffer, h: P.InHeaderValue, dirStat: fs.BigIntStats): void {
    if (!this.runningAsRoot) return; // files stay ours; chown would fail anyway
    const inheritGroup = (Number(dirStat.mode) & S_ISGID) !== 0;
    fs.lchownSync(path, h.uid, inheritGroup ? -1 : h.gid);
  }

  /** Finishes a creation in dir: owner, mode, node, entry reply. */
  private created(parent: Inode, dir: Buffer, dirStat: fs.BigIntStats, name: Buffer, h: P.InHeaderValue, mode: number | null): Body {
    const path = Buffer.concat([dir, name]);
    this.ownNew(path, h, dirStat);
    const st = fs.lstatSync(path, { bigint: true });
    if (mode !== null) {
      let bits = mode;
      if (st.isDirectory() && Number(dirStat.mode) & S_ISGID) bits |= S_ISGID; // as mkdir(2) in a set-group-ID directory
      this.chmodNoFollow(path, st, bits);
    }
    const after = fs.lstatSync(path, { bigint: true });
    return [P.encodeEntryOut(this.entry(this.remember(childRel(parent, name), after), after))];
  }

  private symlink(h: P.InHeaderValue, body: Buffer): Body {
    this.assertWritable();
    const [rawName, target] = P.readNames(body, 0, 2) as [Buffer, Buffer];
    const name = checkedName(rawName);
    const parent = this.node(h.nodeid);
    return this.inDirectory(parent, (dir, dirStat) => {
      // Stored verbatim: only the guest kernel ever resolves it, inside the guest.
      fs.symlinkSync(target, Buffer.concat([dir, name]));
      return this.created(parent, dir, dirStat, name, h, null);
    });
  }

  private mkdir(h: P.InHeaderValue, body: Buffer): Body {
    this.assertWritable();
    const { mode } = P.MkdirIn.decode(body);
    const name = checkedName(P.readNames(body, P.MkdirIn.size, 1)[0]!);
    const parent = this.node(h.nodeid);
    return this.inDirectory(parent, (dir, dirStat) => {
      fs.mkdirSync(Buffer.concat([dir, name]), { mode: 0o700 });
      return this.created(parent, dir, dirStat, name, h, mode);
    });
  }

  private mknod(h: P.InHeaderValue, body: Buffer): Body {
    this.assertWritable();
    const { mode } = P.MknodIn.decode(body);
    const name = checkedName(P.readNames(body, P.MknodIn.size, 1)[0]!);
    const type = mode & S_IFMT;
    // Device nodes made on the host would be host devices, usable by anyone on the host.
    if (type === S_IFCHR || type === S_IFBLK) fail('EPERM', 'device nodes cannot be created in a mapped directory');
    if (type === S_IFSOCK) fail('EOPNOTSUPP', 'sockets cannot be created in a mapped directory');
    if (type !== S_IFREG && type !== S_IFIFO && type !== 0) fail('EINVAL', `unknown file type ${type.toString(8)}`);
    const parent = this.node(h.nodeid);
    return this.inDirectory(parent, (dir, dirStat, dirFd) => {
      const path = Buffer.concat([dir, name]);
      if (type === S_IFIFO) makeFifo(dirFd, path);
      else fs.closeSync(this.openConfined(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK, 0o600));
      return this.created(parent, dir, dirStat, name, h, mode);
    });
  }

  private remove(h: P.InHeaderValue, body: Buffer, directory: boolean): Body {
    this.assertWritable();
    const name = checkedName(P.readNames(body, 0, 1)[0]!);
    const parent = this.node(h.nodeid);
    this.inDirectory(parent, (dir) => {
      const path = Buffer.concat([dir, name]);
      const st = fs.lstatSync(path, { bigint: true });
      if (directory) {
        if (!st.isDirectory()) fail('ENOTDIR', 'not a directory');
        fs.rmdirSync(path);
      } else {
        if (st.isDirectory()) fail('EISDIR', 'is a directory');
        fs.unlinkSync(path);
      }
      this.removed(childRel(parent, name), st);
    });
    return [];
  }

  private rename(h: P.InHeaderValue, body: Buffer, newdir: bigint, flags: number, namesAt: number): Body {
    this.assertWritable();
    if (flags & ~P.RenameFlag.NOREPLACE) fail('EINVAL', `rename flags ${flags} are not supported`);
    const [rawFrom, rawTo] = P.readNames(body, namesAt, 2) as [Buffer, Buffer];
    const fromName = checkedName(rawFrom);
    const toName = checkedName(rawTo);
    const fromParent = this.node(h.nodeid);
    const toParent = this.node(newdir);
    this.inDirectory(fromParent, (fromDir) =>
      this.inDirectory(toParent, (toDir) => {
        const from = Buffer.concat([fromDir, fromName]);
        const to = Buffer.concat([toDir, toName]);
        const moving = fs.lstatSync(from, { bigint: true });
        const replaced = lstatOrNull(to);
        // Checked then done: only the host itself could create `to` in between.
        if (flags & P.RenameFlag.NOREPLACE && replaced) fail('EEXIST', 'target exists');
        fs.renameSync(from, to);
        const fromRel = childRel(fromParent, fromName);
        const toRel = childRel(toParent, toName);
        if (replaced && inodeKey(replaced) !== inodeKey(moving)) this.removed(toRel, replaced);
        this.renamed(fromRel, toRel);
      }),
    );
    return [];
  }

  private link(h: P.InHeaderValue, body: Buffer): Body {
    this.assertWritable();
    const { oldnodeid } = P.LinkIn.decode(body);
    const name = checkedName(P.readNames(body, P.LinkIn.size, 1)[0]!);
    const source = this.node(oldnodeid);
    if (source.type === S_IFDIR) fail('EPERM', 'cannot hard-link a directory');
    const parent = this.node(h.nodeid);
    return this.atNode(source, (sourcePath) =>
      this.inDirectory(parent, (dir) => {
        const path = Buffer.concat([dir, name]);
        fs.linkSync(sourcePath, path); // link(2) does not follow a symlink source
        const st = fs.lstatSync(path, { bigint: true });
        return [P.encodeEntryOut(this.entry(this.remember(childRel(parent, name), st), st))];
      }),
    );
  }

  // --- files -----------------------------------------------------------------------------------

  /** The host open(2) flags for the guest's: access mode, append, truncate and sync only. */
  private hostOpenFlags(guestFlags: number): number {
    let access = guestFlags & O_ACCMODE;
    if (access === O_ACCMODE) fail('EINVAL', 'invalid access mode');
    let extra = guestFlags & (O_APPEND | O_TRUNC | O_SYNC | O_DSYNC);
    if (this.writebackCache) {
      // The kernel reads pages back through any writable handle, and positions appends itself.
      if (access === O_WRONLY) access = O_RDWR;
      extra &= ~O_APPEND;
    }
    return access | extra;
  }

  /** Opens a regular file without following it, confined, and checks it is still the inode `st`. */
  private openRegular(path: Buffer, flags: number, st: fs.BigIntStats): number {
    // O_NONBLOCK: if the host swapped in a FIFO, open must not hang the server; for regular files it is a no-op.
    const fd = this.openConfined(path, flags | O_NOFOLLOW | O_NONBLOCK);
    const now = fs.fstatSync(fd, { bigint: true });
    if (!now.isFile() || now.dev !== st.dev || now.ino !== st.ino) {
      closeQuietly(fd);
      fail('ENOENT', 'file was replaced');
    }
    return fd;
  }

  /**
   * Takes a handle from the VM's budget before a descriptor is opened for it: past the budget,
   * EMFILE before anything is created or opened. `fn` succeeds only by recording its descriptor
   * with addHandle (which keeps the slot); if it fails, the slot goes back.
   */
  private withHandle<T>(fn: () => T): T {
    if (!this.budget.take()) fail('EMFILE', `the guest already holds ${this.budget.limit} open handles`);
    try {
      return fn();
    } catch (err) {
      this.budget.give();
      throw err;
    }
  }

  private addHandle(handle: Handle): bigint {
    const fh = this.nextFh++;
    this.handles.set(fh, handle);
    return BigInt(fh);
  }

  private fileHandle(fh: bigint): Extract<Handle, { kind: 'file' }> {
    const handle = this.handles.get(Number(fh));
    if (handle?.kind !== 'file') fail('EBADF', `no open file ${fh}`);
    return handle;
  }

  private dirHandle(fh: bigint): Extract<Handle, { kind: 'dir' }> {
    const handle = this.handles.get(Number(fh));
    if (handle?.kind !== 'dir') fail('EBADF', `no open directory ${fh}`);
    return handle;
  }

  /**
   * An open file of a node no known name reaches (open, then unlinked): the kernel asks for
   * its attributes without a file handle (fstat), and only the descriptor still reaches it.
   */
  private openFileOfUnnamed(node: Inode): Extract<Handle, { kind: 'file' }> | undefined {
    if (node.rel !== null) return undefined;
    for (const handle of this.handles.values()) {
      if (handle.kind === 'file' && handle.nodeid === node.nodeid) return handle;
    }
    return undefined;
  }

  private release(fh: bigint): void {
    const handle = this.handles.get(Number(fh));
    if (!handle) return;
    this.handles.delete(Number(fh));
    this.budget.give();
    closeQuietly(handle.fd);
  }

  private open(h: P.InHeaderValue, body: Buffer): Body {
    const { flags } = P.OpenIn.decode(body);
    if ((flags & O_ACCMODE) !== O_RDONLY || flags & O_TRUNC) this.assertWritable();
    const hostFlags = this.hostOpenFlags(flags);
    const node = this.node(h.nodeid);
    return this.withHandle(() => this.atNode(node, (path, st) => {
      if (st.isDirectory()) fail('EISDIR', 'is a directory');
      // The guest kernel opens FIFOs and devices itself; it only sends OPEN for regular files.
      if (!st.isFile()) fail('EACCES', 'only regular files are opened on the host');
      const fd = this.openRegular(path, hostFlags, st);
      return [P.OpenOut.encode({ fh: this.addHandle({ kind: 'file', fd, nodeid: node.nodeid }) })];
    }));
  }

  private create(h: P.InHeaderValue, body: Buffer): Body {
    this.assertWritable();
    const args = P.CreateIn.decode(body);
    const name = checkedName(P.readNames(body, P.CreateIn.size, 1)[0]!);
    const hostFlags = this.hostOpenFlags(args.flags) | O_NOFOLLOW | O_NONBLOCK;
    const parent = this.node(h.nodeid);
    return this.withHandle(() => this.inDirectory(parent, (dir, dirStat) => {
      const path = Buffer.concat([dir, name]);
      let fd: number;
      let isNew = true;
      try {
        fd = this.openConfined(path, hostFlags | O_CREAT | O_EXCL, 0o600);
      } catch (err) {
        // The guest's negative dentry was stale; without O_EXCL it just opens the existing file.
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || args.flags & O_EXCL) throw err;
        isNew = false;
        fd = this.openConfined(path, hostFlags);
      }
      try {
        if (isNew) {
          if (this.runningAsRoot) fs.fchownSync(fd, h.uid, Number(dirStat.mode) & S_ISGID ? -1 : h.gid);
          fs.fchmodSync(fd, this.permittedMode(args.mode, S_IFREG));
        }
        const st = fs.fstatSync(fd, { bigint: true });
        if (!st.isFile()) fail('EACCES', 'only regular files are opened on the host');
        const node = this.remember(childRel(parent, name), st);
        const entry = P.encodeEntryOut(this.entry(node, st));
        // Last: once recorded, the descriptor is the handle's (and its budget slot is kept).
        const fh = this.addHandle({ kind: 'file', fd, nodeid: node.nodeid });
        return [entry, P.OpenOut.encode({ fh })];
      } catch (err) {
        closeQuietly(fd);
        throw err;
      }
    }));
  }

  private read(h: P.InHeaderValue, body: Buffer): WholeReply {
    const args = P.ReadIn.decode(body);
    const { fd } = this.fileHandle(args.fh);
    const size = Math.min(args.size, MAX_READ);
    const message = Buffer.allocUnsafe(P.OutHeader.size + size);
    const offset = safeNumber(args.offset);
    let got = 0;
    while (got < size) {
      const n = fs.readSync(fd, message, P.OutHeader.size + got, size - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    const len = P.OutHeader.size + got;
    P.OutHeader.encodeInto({ len, error: 0, unique: h.unique }, message, 0);
    return new WholeReply(message.subarray(0, len));
  }

  private write(body: Buffer): Body {
    this.assertWritable();
    const args = P.WriteIn.decode(body);
    const data = body.subarray(P.WriteIn.size, P.WriteIn.size + args.size);
    if (data.length !== args.size) fail('EINVAL', 'WRITE carries less data than it says');
    const { fd } = this.fileHandle(args.fh);
    const offset = safeNumber(args.offset);
    let done = 0;
    while (done < data.length) {
      // A number, not a bigint: Node's writeSync silently ignores a bigint position.
      done += fs.writeSync(fd, data, done, data.length - done, offset + done);
    }
    return [P.WriteOut.encode({ size: done })];
  }

  private fsync(body: Buffer): Body {
    const args = P.FsyncIn.decode(body);
    const handle = this.handles.get(Number(args.fh));
    if (!handle) fail('EBADF', `no open file ${args.fh}`);
    if (args.fsync_flags & P.FSYNC_FDATASYNC) fs.fdatasyncSync(handle.fd);
    else fs.fsyncSync(handle.fd);
    return [];
  }

  /**
   * Mode 0 grows the file to offset+length (it does not reserve blocks: Node has no
   * fallocate); KEEP_SIZE alone is accepted as the no-op it is for data; the rest is EOPNOTSUPP.
   */
  private fallocate(body: Buffer): Body {
    this.assertWritable();
    const args = P.FallocateIn.decode(body);
    const { fd } = this.fileHandle(args.fh);
    if (args.mode === 0) {
      const end = args.offset + args.length;
      if (fs.fstatSync(fd, { bigint: true }).size < end) fs.ftruncateSync(fd, safeNumber(end));
    } else if (args.mode !== P.FallocateMode.KEEP_SIZE) {
      fail('EOPNOTSUPP', `fallocate mode ${args.mode} is not supported`);
    }
    return [];
  }

  // --- directories -----------------------------------------------------------------------------

  private opendir(h: P.InHeaderValue): Body {
    const node = this.node(h.nodeid);
    return this.withHandle(() => this.atNode(node, (path, st) => {
      if (!st.isDirectory()) fail('ENOTDIR', 'not a directory');
      const fd = this.openConfined(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
      const now = fs.fstatSync(fd, { bigint: true });
      if (now.dev !== st.dev || now.ino !== st.ino) {
        closeQuietly(fd);
        fail('ENOENT', 'directory was replaced');
      }
      const fh = this.addHandle({ kind: 'dir', fd, nodeid: node.nodeid, dev: st.dev, ino: st.ino, entries: null });
      return [P.OpenOut.encode({ fh })];
    }));
  }

  /**
   * Entry i of the listing taken at offset 0 has offset i+1, so the kernel's offset is where
   * to continue. Entries that vanished since the listing was taken are skipped.
   */
  private readdir(body: Buffer, plus: boolean): Body {
    const args = P.ReadIn.decode(body);
    const handle = this.dirHandle(args.fh);
    if (args.offset === 0n || handle.entries === null) {
      const names = fs.readdirSync(`/proc/self/fd/${handle.fd}`, { encoding: 'buffer' });
      handle.entries = [DOT, DOTDOT, ...names];
    }
    const entries = handle.entries;
    const dirNode = this.nodes.get(handle.nodeid);
    const dir = procDir(handle.fd);
    const out = Buffer.alloc(Math.min(args.size, MAX_READ));
    let used = 0;
    for (let i = Number(args.offset); i < entries.length; i++) {
      const name = entries[i]!;
      const size = plus ? P.direntplusSize(name.length) : P.direntSize(name.length);
      if (used + size > out.length) break;
      const off = BigInt(i + 1);
      if (name === DOT || name === DOTDOT) {
        const ino = name === DOT || handle.nodeid === P.FUSE_ROOT_ID ? handle.ino : (lstatOrNull(Buffer.concat([dir, name]))?.ino ?? handle.ino);
        const dirent = { ino, off, type: DT_DIR, name };
        // Node id 0: the kernel links no dentry for these and so takes no lookup.
        const attr = bareDirectoryAttr(ino);
        used = plus
          ? P.encodeDirentplusInto({ nodeid: 0n, entryValid: ZERO, attrValid: ZERO, attr }, dirent, out, used)
          : P.encodeDirentInto(dirent, out, used);
        continue;
      }
      const st = lstatOrNull(Buffer.concat([dir, name]));
      if (!st) continue;
      const dirent = { ino: st.ino, off, type: (Number(st.mode) & S_IFMT) >> 12, name };
      if (plus && dirNode && dirNode.rel !== null) {
        const node = this.remember(childRel(dirNode, name), st);
        used = P.encodeDirentplusInto(this.entry(node, st), dirent, out, used);
      } else if (plus) {
        used = P.encodeDirentplusInto({ nodeid: 0n, entryValid: ZERO, attrValid: ZERO, attr: toAttr(st) }, dirent, out, used);
      } else {
        used = P.encodeDirentInto(dirent, out, used);
      }
    }
    return [out.subarray(0, used)];
  }
}

// ---------------------------------------------------------------------------------------------

const ZERO: P.Timeout = { sec: 0n, nsec: 0 };
const NS_PER_SEC = 1_000_000_000n;

function inodeKey(st: fs.BigIntStats): string {
  return `${st.dev}:${st.ino}`;
}

function procDir(fd: number): Buffer {
  return Buffer.from(`/proc/self/fd/${fd}/`);
}

/** A guest-supplied name, if it is one path component; EINVAL otherwise. */
function checkedName(name: Buffer): Buffer {
  const dots = name.length <= 2 && name.every((c) => c === 0x2e);
  if (name.length === 0 || dots || name.includes(0x2f)) fail('EINVAL', 'name must be a single path component');
  if (name.length > 255) fail('ENAMETOOLONG', 'name is longer than 255 bytes');
  return name;
}

function childRel(parent: Inode, name: Buffer): string {
  if (parent.rel === null) fail('ENOENT', `node ${parent.nodeid} has no known path`);
  const n = name.toString('latin1');
  return parent.rel === '' ? n : `${parent.rel}/${n}`;
}

function lstatOrNull(path: Buffer): fs.BigIntStats | null {
  try {
    return fs.lstatSync(path, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

function closeQuietly(fd: number): void {
  try {
    fs.closeSync(fd);
  } catch {
    // already closed
  }
}

function splitNs(ns: bigint): [bigint, number] {
  let sec = ns / NS_PER_SEC;
  let nsec = ns % NS_PER_SEC;
  if (nsec < 0n) {
    sec -= 1n;
    nsec += NS_PER_SEC;
  }
  return [sec, Number(nsec)];
}

/** What READDIRPLUS says of '.' and '..': they carry no node id, so the kernel uses only ino and type. */
function bareDirectoryAttr(ino: bigint): P.AttrValue {
  return { ino, size: 0n, blocks: 0n, atime: 0n, mtime: 0n, ctime: 0n, atimensec: 0, mtimensec: 0, ctimensec: 0, mode: S_IFDIR, nlink: 1, uid: 0, gid: 0, rdev: 0, blksize: 0, flags: 0 };
}

function toAttr(st: fs.BigIntStats): P.AttrValue {
  const [atime, atimensec] = splitNs(st.atimeNs);
  const [mtime, mtimensec] = splitNs(st.mtimeNs);
  const [ctime, ctimensec] = splitNs(st.ctimeNs);
  return {
    ino: st.ino, size: st.size, blocks: st.blocks,
    atime, mtime, ctime, atimensec, mtimensec, ctimensec,
    mode: Number(st.mode),
    nlink: Number(st.nlink > 0xffffffffn ? 0xffffffffn : st.nlink),
    uid: Number(st.uid), gid: Number(st.gid),
    // Low 32 bits of glibc's dev_t are the kernel's new_encode_dev() for majors < 4096.
    rdev: Number(st.rdev & 0xffffffffn),
    blksize: Number(st.blksize), flags: 0,
  };
}

function seconds(sec: bigint, nsec: number): number {
  return Number(sec) + nsec / 1e9;
}

function nsToSeconds(ns: bigint): number {
  const [sec, nsec] = splitNs(ns);
  return seconds(sec, nsec);
}

function safeNumber(n: bigint): number {
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) fail('EFBIG', 'size too large');
  return Number(n);
}

/**
 * mkfifo(3) is not in Node: run mkfifo(1) on a fixed ASCII name in the verified directory
 * (reached through our /proc fd, which the child can follow), then link it to the guest's
 * name, which fails rather than replace anything.
 */
function makeFifo(dirFd: number, path: Buffer): void {
  const temporary = `.shoal-fifo-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const childPath = `/proc/${process.pid}/fd/${dirFd}/${temporary}`;
  const result = spawnSync('mkfifo', ['-m', '600', '--', childPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (result.status !== 0) fail('EIO', `mkfifo failed: ${result.stderr?.toString().trim() || result.error?.message}`);
  const made = Buffer.concat([procDir(dirFd), Buffer.from(temporary)]);
  try {
    fs.linkSync(made, path);
  } finally {
    fs.unlinkSync(made);
  }
}
