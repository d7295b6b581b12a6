/**
 * The FUSE ABI module against the real linux/fuse.h (compiled here with the host's C
 * compiler: every struct size, every field offset, opcodes and flags), encoders/decoders,
 * and the message splitter on split, merged and corrupt streams.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { FuseMessageSplitter, MAX_MESSAGE_LENGTH, MIN_MESSAGE_LENGTH } from '../../src/fuse/message-splitter';
import * as P from '../../src/fuse/protocol';

const FUSE_H = '/usr/include/linux/fuse.h';
const haveCompiler = spawnSync('cc', ['--version']).status === 0 && fs.existsSync(FUSE_H);

/** C expressions for our layouts: structs whose fields we flattened, and "head" structs (a C struct minus its tail). */
const cFieldPrefix: Record<string, string> = { fuse_statfs_out: 'st.' };
const cHeadEnd: Record<string, string> = { fuse_entry_out: 'attr', fuse_attr_out: 'attr', fuse_dirent: 'name' };

/** Compiles and runs a C program printing "key value" lines about fuse.h; returns them as a map. */
function cFacts(): Map<string, number> {
  const lines: string[] = [];
  const print = (key: string, expr: string): void => {
    lines.push(`  printf("%s %lld\\n", "${key}", (long long)(${expr}));`);
  };
  for (const s of P.ALL_STRUCTS) {
    const tail = cHeadEnd[s.cName];
    print(`${s.cName}#sizeof`, tail ? `offsetof(struct ${s.cName}, ${tail})` : `sizeof(struct ${s.cName})`);
    for (const [name] of s.fields) print(`${s.cName}.${name}`, `offsetof(struct ${s.cName}, ${cFieldPrefix[s.cName] ?? ''}${name})`);
  }
  print('sizeof_entry_out', 'sizeof(struct fuse_entry_out)');
  print('sizeof_attr_out', 'sizeof(struct fuse_attr_out)');
  print('direntplus_name', 'offsetof(struct fuse_direntplus, dirent.name)');
  print('FUSE_KERNEL_MINOR_VERSION', 'FUSE_KERNEL_MINOR_VERSION');
  for (const name of Object.keys(P.Opcode)) print(`op.${name}`, `FUSE_${name}`);
  for (const name of Object.keys(P.InitFlag)) print(`init.${name}`, `FUSE_${name}`);
  for (const name of Object.keys(P.SetattrValid)) print(`fattr.${name}`, `FATTR_${name}`);
  for (const name of Object.keys(P.OpenReplyFlag)) print(`fopen.${name}`, `FOPEN_${name}`);
  print('GETATTR_FH', 'FUSE_GETATTR_FH');
  print('FSYNC_FDATASYNC', 'FUSE_FSYNC_FDATASYNC');
  print('WRITE_CACHE', 'FUSE_WRITE_CACHE');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-fuse-abi-'));
  try {
    const source = path.join(dir, 'abi.c');
    const binary = path.join(dir, 'abi');
    fs.writeFileSync(source, `#include <stdio.h>\n#include <stddef.h>\n#include <linux/fuse.h>\nint main(void) {\n${lines.join('\n')}\n  return 0;\n}\n`);
    const cc = spawnSync('cc', ['-o', binary, source], { encoding: 'utf8' });
    assert.equal(cc.status, 0, cc.stderr);
    const out = spawnSync(binary, [], { encoding: 'utf8' });
    assert.equal(out.status, 0, out.stderr);
    return new Map(out.stdout.trim().split('\n').map((l) => {
      const [key, value] = l.split(' ') as [string, string];
      return [key, Number(value)];
    }));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('FUSE ABI', () => {
  it('has the sizes fuse.h 7.38 documents', () => {
    assert.equal(P.InHeader.size, 40);
    assert.equal(P.OutHeader.size, 16);
    assert.equal(P.Attr.size, 88);
    assert.equal(P.ENTRY_OUT_SIZE, 128);
    assert.equal(P.ATTR_OUT_SIZE, 104);
    assert.equal(P.OpenOut.size, 16);
    assert.equal(P.WriteOut.size, 8);
    assert.equal(P.StatfsOut.size, 80);
    assert.equal(P.InitIn.size, 64);
    assert.equal(P.InitOut.size, 64);
    assert.equal(P.SetattrIn.size, 88);
    assert.equal(P.ReadIn.size, 40);
    assert.equal(P.WriteIn.size, 40);
    assert.equal(P.DirentHead.size, 24);
    assert.equal(P.DIRENTPLUS_HEAD_SIZE, 152);
  });

  it('matches every struct size, field offset, opcode and flag of the compiled linux/fuse.h', { skip: !haveCompiler && 'no C compiler or fuse.h' }, () => {
    const c = cFacts();
    const fact = (key: string): number => {
      const v = c.get(key);
      assert.notEqual(v, undefined, `C program printed no ${key}`);
      return v!;
    };
    assert.ok(fact('FUSE_KERNEL_MINOR_VERSION') >= P.FUSE_KERNEL_MINOR_VERSION);
    for (const s of P.ALL_STRUCTS) {
      assert.equal(s.size, fact(`${s.cName}#sizeof`), `size of ${s.cName}`);
      for (const [name] of s.fields) assert.equal(s.offsets[name], fact(`${s.cName}.${name}`), `offset of ${s.cName}.${name}`);
    }
    assert.equal(P.ENTRY_OUT_SIZE, fact('sizeof_entry_out'));
    assert.equal(P.ATTR_OUT_SIZE, fact('sizeof_attr_out'));
    assert.equal(P.DIRENTPLUS_HEAD_SIZE, fact('direntplus_name'));
    for (const [name, value] of Object.entries(P.Opcode)) assert.equal(value, fact(`op.${name}`), `FUSE_${name}`);
    for (const [name, value] of Object.entries(P.InitFlag)) assert.equal(value, fact(`init.${name}`), `FUSE_${name}`);
    for (const [name, value] of Object.entries(P.SetattrValid)) assert.equal(value, fact(`fattr.${name}`), `FATTR_${name}`);
    for (const [name, value] of Object.entries(P.OpenReplyFlag)) assert.equal(value, fact(`fopen.${name}`), `FOPEN_${name}`);
    assert.equal(P.GETATTR_FH, fact('GETATTR_FH'));
    assert.equal(P.FSYNC_FDATASYNC, fact('FSYNC_FDATASYNC'));
    assert.equal(P.WRITE_CACHE, fact('WRITE_CACHE'));
  });
});

describe('FUSE messages', () => {
  it('round-trips a request and reads its NUL-terminated names', () => {
    const names = Buffer.from('old\0new\xff\0', 'latin1');
    const message = P.encodeRequest({ opcode: P.Opcode.RENAME, unique: 0x1122334455667788n, nodeid: 7n, uid: 1000, gid: 100, pid: 42 }, P.RenameIn.encode({ newdir: 9n }), names);
    assert.equal(message.readUInt32LE(0), message.length);
    const { header, body } = P.decodeRequest(message);
    assert.deepEqual(header, { len: message.length, opcode: 12, unique: 0x1122334455667788n, nodeid: 7n, uid: 1000, gid: 100, pid: 42, total_extlen: 0 });
    assert.equal(P.RenameIn.decode(body).newdir, 9n);
    const [from, to] = P.readNames(body, P.RenameIn.size, 2);
    assert.equal(from!.toString(), 'old');
    assert.deepEqual(to, Buffer.from('new\xff', 'latin1'));
    assert.throws(() => P.readNames(Buffer.from('abc'), 0, 1), RangeError);
    assert.throws(() => P.decodeRequest(message.subarray(0, message.length - 1)), RangeError);
  });

  it('encodes replies and error replies', () => {
    const reply = P.encodeReply(5n, P.WriteOut.encode({ size: 4096 }));
    assert.deepEqual(P.decodeReply(reply), { error: 0, unique: 5n, body: P.WriteOut.encode({ size: 4096 }) });
    const error = P.encodeErrorReply(6n, os.constants.errno.ENOENT);
    assert.equal(error.length, 16);
    assert.deepEqual(P.decodeReply(error), { error: -os.constants.errno.ENOENT, unique: 6n, body: Buffer.alloc(0) });
  });

  it('writes signed times and nanosecond timeouts', () => {
    const attr = { ino: 1n, size: 2n, blocks: 3n, atime: -1n, mtime: 1_700_000_000n, ctime: 0n, atimensec: 999_999_999, mtimensec: 1, ctimensec: 0, mode: 0o100644, nlink: 1, uid: 0, gid: 0, rdev: 0, blksize: 4096, flags: 0 };
    const out = P.encodeAttrOut(P.timeoutFromSeconds(1.5), attr);
    const back = P.decodeAttrOut(out);
    assert.equal(back.attr_valid, 1n);
    assert.equal(back.attr_valid_nsec, 500_000_000);
    assert.deepEqual(back.attr, attr);
    const entry = P.decodeEntryOut(P.encodeEntryOut({ nodeid: 9n, entryValid: P.timeoutFromSeconds(2), attrValid: P.timeoutFromSeconds(0), attr }));
    assert.equal(entry.nodeid, 9n);
    assert.equal(entry.entry_valid, 2n);
    assert.deepEqual(entry.attr, attr);
  });

  it('pads directory records to 8 bytes', () => {
    assert.equal(P.direntSize(1), 32);
    assert.equal(P.direntSize(8), 32);
    assert.equal(P.direntSize(9), 40);
    assert.equal(P.direntplusSize(1), 160);
    const buf = Buffer.alloc(200, 0xee);
    let at = P.encodeDirentInto({ ino: 11n, off: 1n, type: 4, name: Buffer.from('.') }, buf, 0);
    assert.equal(at, 32);
    assert.ok(buf.subarray(25, 32).every((b) => b === 0), 'padding is zeroed');
    at = P.encodeDirentInto({ ino: 12n, off: 2n, type: 8, name: Buffer.from('file-name') }, buf, at);
    assert.equal(at, 72);
    assert.deepEqual(P.decodeDirents(buf.subarray(0, at), false).map((d) => [d.ino, d.off, d.type, d.name.toString()]), [
      [11n, 1n, 4, '.'],
      [12n, 2n, 8, 'file-name'],
    ]);
    const plus = Buffer.alloc(400);
    const attr = P.Attr.decode(Buffer.alloc(P.Attr.size));
    const end = P.encodeDirentplusInto({ nodeid: 3n, entryValid: P.timeoutFromSeconds(1), attrValid: P.timeoutFromSeconds(1), attr }, { ino: 13n, off: 1n, type: 8, name: Buffer.from('abc') }, plus, 0);
    assert.equal(end, 160);
    const [d] = P.decodeDirents(plus.subarray(0, end), true);
    assert.equal(d!.entry!.nodeid, 3n);
    assert.equal(d!.name.toString(), 'abc');
  });
});

/** A fake message of `len` bytes whose bytes after the length are `fill`. */
function message(len: number, fill: number): Buffer {
  const m = Buffer.alloc(len, fill);
  m.writeUInt32LE(len, 0);
  return m;
}

describe('FuseMessageSplitter', () => {
  it('passes whole messages through, one or many per chunk', () => {
    const splitter = new FuseMessageSplitter();
    const a = message(16, 1);
    const b = message(100, 2);
    const c = message(40, 3);
    assert.deepEqual(splitter.push(a), [a]);
    assert.deepEqual(splitter.push(Buffer.concat([b, c, a])), [b, c, a]);
    assert.equal(splitter.pendingBytes, 0);
  });

  it('reassembles messages split anywhere, including inside the length field', () => {
    const stream = Buffer.concat([message(50, 7), message(16, 8), message(4096, 9), message(17, 10)]);
    for (const cut of [1, 2, 3, 5, 16, 49, 50, 51, 1000]) {
      const splitter = new FuseMessageSplitter();
      const out: Buffer[] = [];
      for (let at = 0; at < stream.length; at += cut) out.push(...splitter.push(stream.subarray(at, at + cut)));
      assert.deepEqual(out.map((m) => m.length), [50, 16, 4096, 17], `chunks of ${cut}`);
      assert.deepEqual(Buffer.concat(out), stream);
      assert.equal(splitter.pendingBytes, 0);
    }
  });

  it('keeps a partial message until the rest arrives', () => {
    const splitter = new FuseMessageSplitter();
    const m = message(64, 5);
    assert.deepEqual(splitter.push(m.subarray(0, 3)), []);
    assert.deepEqual(splitter.push(Buffer.alloc(0)), []);
    assert.deepEqual(splitter.push(m.subarray(3, 63)), []);
    assert.equal(splitter.pendingBytes, 63);
    assert.deepEqual(splitter.push(m.subarray(63)), [m]);
  });

  it('returns messages that own their bytes', () => {
    const splitter = new FuseMessageSplitter();
    const chunk = message(32, 4);
    const [out] = splitter.push(chunk);
    chunk.fill(0xff);
    assert.deepEqual(out, message(32, 4));
  });

  it('rejects lengths below the header size or above 32 MiB', () => {
    assert.equal(MIN_MESSAGE_LENGTH, 16);
    assert.equal(MAX_MESSAGE_LENGTH, 32 * 1024 * 1024);
    for (const len of [0, 1, 15]) {
      const header = Buffer.alloc(16);
      header.writeUInt32LE(len, 0);
      assert.throws(() => new FuseMessageSplitter().push(header), /outside 16\.\.33554432/);
    }
    const huge = Buffer.alloc(4);
    huge.writeUInt32LE(MAX_MESSAGE_LENGTH + 1, 0);
    assert.throws(() => new FuseMessageSplitter().push(huge), RangeError);
    // Exactly the maximum is a valid (pending) length.
    huge.writeUInt32LE(MAX_MESSAGE_LENGTH, 0);
    const splitter = new FuseMessageSplitter();
    assert.deepEqual(splitter.push(huge), []);
    assert.equal(splitter.pendingBytes, 4);
  });
});
