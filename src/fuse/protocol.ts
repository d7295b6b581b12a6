/**
 * The FUSE kernel ABI (linux/fuse.h, protocol 7.38): opcodes, flags and the request/reply
 * structs, little-endian. Each struct is declared once as a field list; its size, offsets,
 * encoder and decoder all derive from that list, and test/unit/fuse-protocol.test.ts checks
 * every size and offset against the C header compiled on the build host.
 *
 * Only Node built-ins here: this file also runs inside the guest (through the splitter).
 */

export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** Oldest kernel minor we serve: 7.23 made fuse_init_out 64 bytes and every struct we use its current size. */
export const FUSE_MIN_KERNEL_MINOR_VERSION = 23;
export const FUSE_ROOT_ID = 1;

export const Opcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  GETLK: 31,
  SETLK: 32,
  SETLKW: 33,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  BMAP: 37,
  DESTROY: 38,
  IOCTL: 39,
  POLL: 40,
  NOTIFY_REPLY: 41,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  READDIRPLUS: 44,
  RENAME2: 45,
  LSEEK: 46,
  COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48,
  REMOVEMAPPING: 49,
  SYNCFS: 50,
  TMPFILE: 51,
} as const;

const opcodeNames = new Map<number, string>(Object.entries(Opcode).map(([name, value]) => [value, name]));

/** "LOOKUP", or "opcode 999" for numbers this ABI does not name; for logs and errors. */
export function opcodeName(opcode: number): string {
  return opcodeNames.get(opcode) ?? `opcode ${opcode}`;
}

/** fuse_init_in.flags / fuse_init_out.flags (the low 32 bits; we never use flags2). */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  POSIX_LOCKS: 1 << 1,
  ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4,
  BIG_WRITES: 1 << 5,
  DONT_MASK: 1 << 6,
  FLOCK_LOCKS: 1 << 10,
  AUTO_INVAL_DATA: 1 << 12,
  DO_READDIRPLUS: 1 << 13,
  READDIRPLUS_AUTO: 1 << 14,
  ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16,
  NO_OPEN_SUPPORT: 1 << 17,
  PARALLEL_DIROPS: 1 << 18,
  HANDLE_KILLPRIV: 1 << 19,
  POSIX_ACL: 1 << 20,
  ABORT_ERROR: 1 << 21,
  MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23,
  INIT_EXT: 1 << 30,
} as const;

/** fuse_setattr_in.valid */
export const SetattrValid = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  LOCKOWNER: 1 << 9,
  CTIME: 1 << 10,
  KILL_SUIDGID: 1 << 11,
} as const;

/** fuse_open_out.open_flags */
export const OpenReplyFlag = {
  DIRECT_IO: 1 << 0,
  KEEP_CACHE: 1 << 1,
  NONSEEKABLE: 1 << 2,
  CACHE_DIR: 1 << 3,
} as const;

export const GETATTR_FH = 1 << 0;
export const FSYNC_FDATASYNC = 1 << 0;
export const WRITE_CACHE = 1 << 0;

/** renameat2(2) flags as carried by fuse_rename2_in.flags. */
export const RenameFlag = {
  NOREPLACE: 1 << 0,
  EXCHANGE: 1 << 1,
  WHITEOUT: 1 << 2,
} as const;

/** fallocate(2) modes as carried by fuse_fallocate_in.mode. */
export const FallocateMode = {
  KEEP_SIZE: 0x01,
  PUNCH_HOLE: 0x02,
} as const;

/** Largest message either side accepts; far above any real one (max_write is 1 MiB). */
export const MAX_MESSAGE_LENGTH = 32 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Struct layouts

/** A field's C type, or a number of padding/reserved bytes that are written as zero and not decoded. */
export type FieldType = 'u16' | 'u32' | 'i32' | 'u64' | 'i64' | number;
export type Field = readonly [name: string, type: FieldType];

type FieldValue<T extends FieldType> = T extends 'u64' | 'i64' ? bigint : number;
/** The decoded form of a struct: one property per non-padding field; 64-bit fields are bigints. */
export type StructValue<L extends readonly Field[]> = {
  [F in L[number] as F[1] extends number ? never : F[0]]: FieldValue<F[1]>;
};

export interface Struct<L extends readonly Field[]> {
  /** The C name in linux/fuse.h. */
  readonly cName: string;
  readonly fields: L;
  readonly size: number;
  /** Byte offset of each named field. */
  readonly offsets: Readonly<Record<string, number>>;
  decode(buf: Buffer, offset?: number): StructValue<L>;
  /** Writes the struct into target at offset (fields left out are zero); returns offset + size. */
  encodeInto(value: Partial<StructValue<L>>, target: Buffer, offset?: number): number;
  encode(value: Partial<StructValue<L>>): Buffer;
}

function fieldSize(type: FieldType): number {
  if (typeof type === 'number') return type;
  return type === 'u16' ? 2 : type === 'u32' || type === 'i32' ? 4 : 8;
}

function defineStruct<const L extends readonly Field[]>(cName: string, fields: L): Struct<L> {
  const offsets: Record<string, number> = {};
  let size = 0;
  for (const [name, type] of fields) {
    offsets[name] = size;
    size += fieldSize(type);
  }
  const struct: Struct<L> = {
    cName,
    fields,
    size,
    offsets,
    decode(buf, offset = 0) {
      if (buf.length < offset + size) {
        throw new RangeError(`${cName} needs ${size} bytes at offset ${offset}, message has ${buf.length}`);
      }
      const out: Record<string, number | bigint> = {};
      let at = offset;
      for (const [name, type] of fields) {
        switch (type) {
          case 'u16': out[name] = buf.readUInt16LE(at); break;
          case 'u32': out[name] = buf.readUInt32LE(at); break;
          case 'i32': out[name] = buf.readInt32LE(at); break;
          case 'u64': out[name] = buf.readBigUInt64LE(at); break;
          case 'i64': out[name] = buf.readBigInt64LE(at); break;
          default: break;
        }
        at += fieldSize(type);
      }
      return out as StructValue<L>;
    },
    encodeInto(value, target, offset = 0) {
      const values = value as Record<string, number | bigint | undefined>;
      let at = offset;
      for (const [name, type] of fields) {
        const v = values[name];
        switch (type) {
          case 'u16': target.writeUInt16LE(Number(v ?? 0), at); break;
          case 'u32': target.writeUInt32LE(Number(v ?? 0), at); break;
          case 'i32': target.writeInt32LE(Number(v ?? 0), at); break;
          case 'u64': target.writeBigUInt64LE(BigInt(v ?? 0), at); break;
          case 'i64': target.writeBigInt64LE(BigInt(v ?? 0), at); break;
          default: target.fill(0, at, at + type); break;
        }
        at += fieldSize(type);
      }
      return at;
    },
    encode(value) {
      const buf = Buffer.alloc(size);
      struct.encodeInto(value, buf, 0);
      return buf;
    },
  };
  return struct;
}

export const InHeader = defineStruct('fuse_in_header', [
  ['len', 'u32'], ['opcode', 'u32'], ['unique', 'u64'], ['nodeid', 'u64'],
  ['uid', 'u32'], ['gid', 'u32'], ['pid', 'u32'], ['total_extlen', 'u16'], ['padding', 2],
]);
export const OutHeader = defineStruct('fuse_out_header', [['len', 'u32'], ['error', 'i32'], ['unique', 'u64']]);

// fuse_attr's times are u64 in the header but the kernel reads them as signed seconds.
export const Attr = defineStruct('fuse_attr', [
  ['ino', 'u64'], ['size', 'u64'], ['blocks', 'u64'], ['atime', 'i64'], ['mtime', 'i64'], ['ctime', 'i64'],
  ['atimensec', 'u32'], ['mtimensec', 'u32'], ['ctimensec', 'u32'], ['mode', 'u32'], ['nlink', 'u32'],
  ['uid', 'u32'], ['gid', 'u32'], ['rdev', 'u32'], ['blksize', 'u32'], ['flags', 'u32'],
]);
/** fuse_entry_out without its trailing fuse_attr. */
export const EntryOutHead = defineStruct('fuse_entry_out', [
  ['nodeid', 'u64'], ['generation', 'u64'], ['entry_valid', 'u64'], ['attr_valid', 'u64'],
  ['entry_valid_nsec', 'u32'], ['attr_valid_nsec', 'u32'],
]);
/** fuse_attr_out without its trailing fuse_attr. */
export const AttrOutHead = defineStruct('fuse_attr_out', [['attr_valid', 'u64'], ['attr_valid_nsec', 'u32'], ['dummy', 4]]);
export const ENTRY_OUT_SIZE = EntryOutHead.size + Attr.size;
export const ATTR_OUT_SIZE = AttrOutHead.size + Attr.size;

export const InitIn = defineStruct('fuse_init_in', [
  ['major', 'u32'], ['minor', 'u32'], ['max_readahead', 'u32'], ['flags', 'u32'], ['flags2', 'u32'], ['unused', 44],
]);
export const InitOut = defineStruct('fuse_init_out', [
  ['major', 'u32'], ['minor', 'u32'], ['max_readahead', 'u32'], ['flags', 'u32'],
  ['max_background', 'u16'], ['congestion_threshold', 'u16'], ['max_write', 'u32'], ['time_gran', 'u32'],
  ['max_pages', 'u16'], ['map_alignment', 'u16'], ['flags2', 'u32'], ['unused', 28],
]);
export const ForgetIn = defineStruct('fuse_forget_in', [['nlookup', 'u64']]);
export const ForgetOne = defineStruct('fuse_forget_one', [['nodeid', 'u64'], ['nlookup', 'u64']]);
export const BatchForgetIn = defineStruct('fuse_batch_forget_in', [['count', 'u32'], ['dummy', 4]]);
export const GetattrIn = defineStruct('fuse_getattr_in', [['getattr_flags', 'u32'], ['dummy', 4], ['fh', 'u64']]);
export const SetattrIn = defineStruct('fuse_setattr_in', [
  ['valid', 'u32'], ['padding', 4], ['fh', 'u64'], ['size', 'u64'], ['lock_owner', 'u64'],
  ['atime', 'i64'], ['mtime', 'i64'], ['ctime', 'i64'],
  ['atimensec', 'u32'], ['mtimensec', 'u32'], ['ctimensec', 'u32'], ['mode', 'u32'], ['unused4', 4],
  ['uid', 'u32'], ['gid', 'u32'], ['unused5', 4],
]);
export const MknodIn = defineStruct('fuse_mknod_in', [['mode', 'u32'], ['rdev', 'u32'], ['umask', 'u32'], ['padding', 4]]);
export const MkdirIn = defineStruct('fuse_mkdir_in', [['mode', 'u32'], ['umask', 'u32']]);
export const RenameIn = defineStruct('fuse_rename_in', [['newdir', 'u64']]);
export const Rename2In = defineStruct('fuse_rename2_in', [['newdir', 'u64'], ['flags', 'u32'], ['padding', 4]]);
export const LinkIn = defineStruct('fuse_link_in', [['oldnodeid', 'u64']]);
export const OpenIn = defineStruct('fuse_open_in', [['flags', 'u32'], ['open_flags', 'u32']]);
export const CreateIn = defineStruct('fuse_create_in', [['flags', 'u32'], ['mode', 'u32'], ['umask', 'u32'], ['open_flags', 'u32']]);
export const OpenOut = defineStruct('fuse_open_out', [['fh', 'u64'], ['open_flags', 'u32'], ['padding', 4]]);
export const ReleaseIn = defineStruct('fuse_release_in', [['fh', 'u64'], ['flags', 'u32'], ['release_flags', 'u32'], ['lock_owner', 'u64']]);
export const FlushIn = defineStruct('fuse_flush_in', [['fh', 'u64'], ['unused', 4], ['padding', 4], ['lock_owner', 'u64']]);
export const ReadIn = defineStruct('fuse_read_in', [
  ['fh', 'u64'], ['offset', 'u64'], ['size', 'u32'], ['read_flags', 'u32'], ['lock_owner', 'u64'], ['flags', 'u32'], ['padding', 4],
]);
export const WriteIn = defineStruct('fuse_write_in', [
  ['fh', 'u64'], ['offset', 'u64'], ['size', 'u32'], ['write_flags', 'u32'], ['lock_owner', 'u64'], ['flags', 'u32'], ['padding', 4],
]);
export const WriteOut = defineStruct('fuse_write_out', [['size', 'u32'], ['padding', 4]]);
export const StatfsOut = defineStruct('fuse_statfs_out', [
  ['blocks', 'u64'], ['bfree', 'u64'], ['bavail', 'u64'], ['files', 'u64'], ['ffree', 'u64'],
  ['bsize', 'u32'], ['namelen', 'u32'], ['frsize', 'u32'], ['padding', 4], ['spare', 24],
]);
export const FsyncIn = defineStruct('fuse_fsync_in', [['fh', 'u64'], ['fsync_flags', 'u32'], ['padding', 4]]);
export const AccessIn = defineStruct('fuse_access_in', [['mask', 'u32'], ['padding', 4]]);
export const InterruptIn = defineStruct('fuse_interrupt_in', [['unique', 'u64']]);
export const FallocateIn = defineStruct('fuse_fallocate_in', [['fh', 'u64'], ['offset', 'u64'], ['length', 'u64'], ['mode', 'u32'], ['padding', 4]]);
export const LseekIn = defineStruct('fuse_lseek_in', [['fh', 'u64'], ['offset', 'u64'], ['whence', 'u32'], ['padding', 4]]);
export const LseekOut = defineStruct('fuse_lseek_out', [['offset', 'u64']]);
/** fuse_dirent without its trailing name. */
export const DirentHead = defineStruct('fuse_dirent', [['ino', 'u64'], ['off', 'u64'], ['namelen', 'u32'], ['type', 'u32']]);
export const DIRENTPLUS_HEAD_SIZE = ENTRY_OUT_SIZE + DirentHead.size;

/** Every struct declared here, for the ABI test. Heads are checked against their C struct's leading fields. */
export const ALL_STRUCTS: ReadonlyArray<Struct<readonly Field[]>> = [
  InHeader, OutHeader, Attr, EntryOutHead, AttrOutHead, InitIn, InitOut, ForgetIn, ForgetOne, BatchForgetIn,
  GetattrIn, SetattrIn, MknodIn, MkdirIn, RenameIn, Rename2In, LinkIn, OpenIn, CreateIn, OpenOut, ReleaseIn,
  FlushIn, ReadIn, WriteIn, WriteOut, StatfsOut, FsyncIn, AccessIn, InterruptIn, FallocateIn, LseekIn, LseekOut,
  DirentHead,
];

export type InHeaderValue = StructValue<typeof InHeader.fields>;
export type AttrValue = StructValue<typeof Attr.fields>;

// ---------------------------------------------------------------------------------------------
// Whole messages

/** A request split into its header and the bytes after it. */
export interface Request {
  header: InHeaderValue;
  body: Buffer;
}

export function decodeRequest(message: Buffer): Request {
  const header = InHeader.decode(message, 0);
  if (header.len !== message.length) {
    throw new RangeError(`FUSE request says it is ${header.len} bytes but is ${message.length}`);
  }
  return { header, body: message.subarray(InHeader.size) };
}

/** A whole request (header.len filled in); the kernel's side of the conversation, for tests and tools. */
export function encodeRequest(header: Partial<InHeaderValue>, ...body: Buffer[]): Buffer {
  const len = InHeader.size + body.reduce((n, b) => n + b.length, 0);
  return Buffer.concat([InHeader.encode({ ...header, len }), ...body], len);
}

/** A successful reply: out header (len set, error 0) then the body parts. */
export function encodeReply(unique: bigint, ...body: Buffer[]): Buffer {
  const len = OutHeader.size + body.reduce((n, b) => n + b.length, 0);
  return Buffer.concat([OutHeader.encode({ len, error: 0, unique }), ...body], len);
}

/** An error reply: the out header alone with -errno (errno positive here, as in os.constants.errno). */
export function encodeErrorReply(unique: bigint, errno: number): Buffer {
  return OutHeader.encode({ len: OutHeader.size, error: -Math.abs(errno), unique });
}

export interface Reply {
  error: number;
  unique: bigint;
  body: Buffer;
}

export function decodeReply(message: Buffer): Reply {
  const header = OutHeader.decode(message, 0);
  if (header.len !== message.length) {
    throw new RangeError(`FUSE reply says it is ${header.len} bytes but is ${message.length}`);
  }
  return { error: header.error, unique: header.unique, body: message.subarray(OutHeader.size) };
}

/**
 * `count` NUL-terminated names starting at `offset` (LOOKUP's name; RENAME's old and new name;
 * SYMLINK's name and target). Raw bytes: names need not be UTF-8. Throws when a terminator is missing.
 */
export function readNames(body: Buffer, offset: number, count: number): Buffer[] {
  const names: Buffer[] = [];
  let at = offset;
  for (let i = 0; i < count; i++) {
    const end = body.indexOf(0, at);
    if (end < 0) throw new RangeError('FUSE request name is not NUL-terminated');
    names.push(body.subarray(at, end));
    at = end + 1;
  }
  return names;
}

// ---------------------------------------------------------------------------------------------
// Entry, attribute and directory replies

export interface EntryValue {
  nodeid: bigint;
  generation?: bigint;
  entryValid: Timeout;
  attrValid: Timeout;
  attr: AttrValue;
}

/** A cache timeout as the kernel wants it: whole seconds plus nanoseconds. */
export interface Timeout {
  sec: bigint;
  nsec: number;
}

export function timeoutFromSeconds(seconds: number): Timeout {
  const whole = Math.floor(Math.max(0, seconds));
  return { sec: BigInt(whole), nsec: Math.round((Math.max(0, seconds) - whole) * 1e9) % 1e9 };
}

export function encodeEntryOutInto(entry: EntryValue, target: Buffer, offset: number): number {
  const at = EntryOutHead.encodeInto(
    {
      nodeid: entry.nodeid,
      generation: entry.generation ?? 0n,
      entry_valid: entry.entryValid.sec,
      attr_valid: entry.attrValid.sec,
      entry_valid_nsec: entry.entryValid.nsec,
      attr_valid_nsec: entry.attrValid.nsec,
    },
    target,
    offset,
  );
  return Attr.encodeInto(entry.attr, target, at);
}

export function encodeEntryOut(entry: EntryValue): Buffer {
  const buf = Buffer.alloc(ENTRY_OUT_SIZE);
  encodeEntryOutInto(entry, buf, 0);
  return buf;
}

export function decodeEntryOut(buf: Buffer, offset = 0): StructValue<typeof EntryOutHead.fields> & { attr: AttrValue } {
  return { ...EntryOutHead.decode(buf, offset), attr: Attr.decode(buf, offset + EntryOutHead.size) };
}

export function encodeAttrOut(attrValid: Timeout, attr: AttrValue): Buffer {
  const buf = Buffer.alloc(ATTR_OUT_SIZE);
  const at = AttrOutHead.encodeInto({ attr_valid: attrValid.sec, attr_valid_nsec: attrValid.nsec }, buf, 0);
  Attr.encodeInto(attr, buf, at);
  return buf;
}

export function decodeAttrOut(buf: Buffer, offset = 0): StructValue<typeof AttrOutHead.fields> & { attr: AttrValue } {
  return { ...AttrOutHead.decode(buf, offset), attr: Attr.decode(buf, offset + AttrOutHead.size) };
}

/** Directory records are padded to 8 bytes (FUSE_DIRENT_ALIGN). */
export function align8(n: number): number {
  return (n + 7) & ~7;
}

export function direntSize(nameLength: number): number {
  return align8(DirentHead.size + nameLength);
}

export function direntplusSize(nameLength: number): number {
  return align8(DIRENTPLUS_HEAD_SIZE + nameLength);
}

export interface DirentValue {
  ino: bigint;
  /** The offset the kernel passes back to continue after this entry. */
  off: bigint;
  /** DT_* type (mode >> 12). */
  type: number;
  name: Buffer;
}

/** Writes one fuse_dirent with its name and zero padding; returns the offset after it. */
export function encodeDirentInto(entry: DirentValue, target: Buffer, offset: number): number {
  const at = DirentHead.encodeInto({ ino: entry.ino, off: entry.off, namelen: entry.name.length, type: entry.type }, target, offset);
  entry.name.copy(target, at);
  const end = offset + direntSize(entry.name.length);
  target.fill(0, at + entry.name.length, end);
  return end;
}

/** Writes one fuse_direntplus (entry_out, then dirent and name, padded); returns the offset after it. */
export function encodeDirentplusInto(entry: EntryValue, dirent: DirentValue, target: Buffer, offset: number): number {
  return encodeDirentInto(dirent, target, encodeEntryOutInto(entry, target, offset));
}

export interface DecodedDirent {
  ino: bigint;
  off: bigint;
  type: number;
  name: Buffer;
  entry?: ReturnType<typeof decodeEntryOut>;
}

/** Parses a READDIR (plus = false) or READDIRPLUS reply body; for tests and tools. */
export function decodeDirents(body: Buffer, plus: boolean): DecodedDirent[] {
  const out: DecodedDirent[] = [];
  let at = 0;
  while (at < body.length) {
    const entry = plus ? decodeEntryOut(body, at) : undefined;
    const direntAt = plus ? at + ENTRY_OUT_SIZE : at;
    const head = DirentHead.decode(body, direntAt);
    const nameAt = direntAt + DirentHead.size;
    if (nameAt + head.namelen > body.length) throw new RangeError('dirent name runs past the reply');
    out.push({ ino: head.ino, off: head.off, type: head.type, name: Buffer.from(body.subarray(nameAt, nameAt + head.namelen)), ...(entry ? { entry } : {}) });
    at += plus ? direntplusSize(head.namelen) : direntSize(head.namelen);
  }
  return out;
}
