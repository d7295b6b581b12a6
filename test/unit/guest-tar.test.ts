/**
 * The host's unpacking of a guest's tar (`shoal cp NAME:PATH DEST`, src/cli/guest-tar.ts),
 * against a tar crafted here byte by byte as a hostile guest could send it: devices, a FIFO,
 * set-id bits, hard links and names that leave the copy, and a `./` entry that asks for mode
 * 0777 on the staging directory itself.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, test } from 'node:test';
import { Header } from 'tar';
import { unpackGuestTar } from '../../src/cli/guest-tar';
import { walkTree } from '../helpers/tree-walk';

interface Member {
  path: string;
  type: 'File' | 'Directory' | 'SymbolicLink' | 'Link' | 'CharacterDevice' | 'BlockDevice' | 'FIFO';
  mode: number;
  data?: string;
  linkpath?: string;
  devmaj?: number;
  devmin?: number;
}

const MTIME = new Date('2020-01-02T03:04:05Z');

function tarOf(members: Member[]): Buffer {
  const blocks: Buffer[] = [];
  for (const m of members) {
    const data = Buffer.from(m.data ?? '');
    const header = new Header({
      path: m.path, type: m.type, mode: m.mode, uid: 0, gid: 0, size: data.length, mtime: MTIME,
      linkpath: m.linkpath ?? '', devmaj: m.devmaj ?? 0, devmin: m.devmin ?? 0, uname: 'root', gname: 'root',
    });
    header.encode();
    blocks.push(header.block!);
    if (data.length) blocks.push(data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-guest-tar-'));
  fs.writeFileSync(path.join(dir, 'outside-target'), 'host file');
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Unpacks `tar` into a fresh 0700 staging directory under dir, as cp does. */
async function unpack(name: string, tar: Buffer): Promise<{ staging: string; skipped: string[]; error?: Error }> {
  const staging = fs.mkdtempSync(path.join(dir, `${name}-`));
  const skipped: string[] = [];
  const u = unpackGuestTar(staging, (line) => skipped.push(line));
  // In small pieces, so the flow control is exercised too.
  const pieces = Array.from({ length: Math.ceil(tar.length / 700) }, (_, i) => tar.subarray(i * 700, (i + 1) * 700));
  await pipeline(Readable.from(pieces), u.sink);
  try {
    await u.done;
  } catch (err) {
    return { staging, skipped, error: err as Error };
  }
  u.settleModes();
  return { staging, skipped };
}

test('a hostile tar: only files, directories and links are created, never a set-id bit, nothing outside, the staging directory stays 0700', async () => {
  const hostile = tarOf([
    { path: './', type: 'Directory', mode: 0o777 },
    { path: 'dir/', type: 'Directory', mode: 0o777 },
    { path: 'dir/data', type: 'File', mode: 0o640, data: 'regular data' },
    { path: 'dir/suid', type: 'File', mode: 0o4755, data: '#!/bin/sh\nid\n' },
    { path: 'dir/sgid-dir/', type: 'Directory', mode: 0o3777 },
    { path: 'dir/null', type: 'CharacterDevice', mode: 0o666, devmaj: 1, devmin: 3 },
    { path: 'dir/sda', type: 'BlockDevice', mode: 0o666, devmaj: 8, devmin: 0 },
    { path: 'dir/fifo', type: 'FIFO', mode: 0o666 },
    { path: 'dir/hl-out', type: 'Link', mode: 0o644, linkpath: '../outside-target' },
    { path: 'dir/hl-abs', type: 'Link', mode: 0o644, linkpath: '/etc/passwd' },
    { path: 'dir/hl-in', type: 'Link', mode: 0o644, linkpath: 'dir/data' },
    { path: 'dir/link', type: 'SymbolicLink', mode: 0o777, linkpath: '/etc/passwd' },
    { path: 'dir/up', type: 'SymbolicLink', mode: 0o777, linkpath: '../../../usr/lib' },
    { path: '../escaped', type: 'File', mode: 0o644, data: 'escaped' },
    { path: '/abs-file', type: 'File', mode: 0o644, data: 'absolute' },
    { path: 'dir/../../escaped2', type: 'File', mode: 0o644, data: 'escaped' },
  ]);
  const before = fs.readdirSync(dir).sort();
  const { staging, skipped, error } = await unpack('hostile', hostile);
  assert.equal(error, undefined, String(error));
  const tree = walkTree(staging);
  // Nothing but files, directories and symlinks; no set-id or sticky bit anywhere.
  for (const { rel, st } of tree) {
    assert.ok(st.isFile() || st.isDirectory() || st.isSymbolicLink(), `${rel} is a ${st.mode.toString(8)}`);
    if (!st.isSymbolicLink()) assert.equal(st.mode & 0o7000, 0, `${rel} has mode ${(st.mode & 0o7777).toString(8)}`);
  }
  assert.deepEqual(tree.map((e) => e.rel).sort(), ['', 'dir', 'dir/data', 'dir/hl-in', 'dir/link', 'dir/sgid-dir', 'dir/suid', 'dir/up']);
  // The staging directory itself ignored the `./` entry's 0777.
  assert.equal(fs.statSync(staging).mode & 0o7777, 0o700);
  // The regular data and the modes (less set-id/sticky) and times are kept; links stay links.
  assert.equal(fs.readFileSync(path.join(staging, 'dir/data'), 'utf8'), 'regular data');
  assert.equal(fs.statSync(path.join(staging, 'dir/data')).mode & 0o7777, 0o640);
  assert.equal(fs.statSync(path.join(staging, 'dir/suid')).mode & 0o7777, 0o755);
  assert.equal(fs.statSync(path.join(staging, 'dir/sgid-dir')).mode & 0o7777, 0o777);
  assert.equal(fs.statSync(path.join(staging, 'dir')).mode & 0o7777, 0o777);
  assert.equal(fs.statSync(path.join(staging, 'dir')).mtime.getTime(), MTIME.getTime());
  assert.equal(fs.statSync(path.join(staging, 'dir/data')).mtime.getTime(), MTIME.getTime());
  assert.equal(fs.readlinkSync(path.join(staging, 'dir/link')), '/etc/passwd');
  assert.equal(fs.readlinkSync(path.join(staging, 'dir/up')), '../../../usr/lib');
  assert.equal(fs.lstatSync(path.join(staging, 'dir/link')).mtime.getTime(), MTIME.getTime());
  assert.equal(fs.statSync(path.join(staging, 'dir/hl-in')).ino, fs.statSync(path.join(staging, 'dir/data')).ino);
  // Owned by the caller, not by the ids in the tar.
  assert.equal(fs.statSync(path.join(staging, 'dir/data')).uid, process.getuid!());
  // Nothing appeared or changed beside the staging directory or at the root.
  assert.deepEqual(fs.readdirSync(dir).filter((n) => !n.startsWith('hostile-')).sort(), before);
  assert.equal(fs.readFileSync(path.join(dir, 'outside-target'), 'utf8'), 'host file');
  assert.equal(fs.statSync(path.join(dir, 'outside-target')).nlink, 1);
  assert.ok(!fs.existsSync('/abs-file') && !fs.existsSync(path.join(dir, 'escaped')) && !fs.existsSync(path.join(dir, 'escaped2')));
  // One line for each skipped member.
  for (const name of ['dir/null: a character device', 'dir/sda: a block device', 'dir/fifo: a FIFO', 'dir/hl-out', 'dir/hl-abs', '"../escaped"', '"/abs-file"', '"dir/../../escaped2"']) {
    assert.ok(skipped.some((l) => l.includes(name)), `no line for ${name} in ${JSON.stringify(skipped)}`);
  }
  assert.equal(skipped.length, 8, JSON.stringify(skipped));
});

test('a member written through a symlink the tar planted fails the unpack and writes nothing outside', async () => {
  const target = fs.mkdtempSync(path.join(dir, 'target-'));
  const tar = tarOf([
    { path: 'ln', type: 'SymbolicLink', mode: 0o777, linkpath: target },
    { path: 'ln/planted', type: 'File', mode: 0o4755, data: 'planted' },
  ]);
  const { error } = await unpack('through-link', tar);
  assert.ok(error, 'the unpack failed');
  assert.deepEqual(fs.readdirSync(target), []);
});

test('a truncated tar fails the unpack', async () => {
  const whole = tarOf([{ path: 'big', type: 'File', mode: 0o644, data: 'x'.repeat(5000) }]);
  const { error } = await unpack('truncated', whole.subarray(0, 2048));
  assert.ok(error, 'the unpack failed');
});
