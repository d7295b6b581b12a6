/**
 * RecordDir, where front ends keep what has no VM (paused sandboxes): private files, keys checked
 * before they become names, and records read as untrusted input (no links followed, a size cap,
 * the caller's parser deciding what is a record).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { RecordDir } from '../../src/state/record-dir';
import { tempDir } from '../helpers/temp-dir';

interface Rec { name: string; n: number }
const parse = (raw: string, key: string): Rec | undefined => {
  try {
    const v = JSON.parse(raw) as Partial<Rec>;
    return v.name === key && typeof v.n === 'number' ? { name: key, n: v.n } : undefined;
  } catch {
    return undefined;
  }
};

test('records are private, listed, replaced and removed', () => {
  const dir = path.join(tempDir('rd-'), 'paused');
  const records = new RecordDir<Rec>(dir, parse);
  assert.deepEqual(records.list(), [], 'no directory yet is no records');
  records.put('a', { name: 'a', n: 1 });
  records.put('b.c-d_e', { name: 'b.c-d_e', n: 2 });
  assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
  assert.equal(fs.statSync(path.join(dir, 'a.json')).mode & 0o777, 0o600);
  records.put('a', { name: 'a', n: 3 });
  assert.deepEqual(records.get('a'), { name: 'a', n: 3 });
  assert.deepEqual(records.list().map((r) => r.name).sort(), ['a', 'b.c-d_e']);
  records.remove('a');
  assert.equal(records.get('a'), undefined);
  assert.deepEqual(fs.readdirSync(dir), ['b.c-d_e.json'], 'no temp file left');
});

test('keys that are not names never become paths', () => {
  const dir = path.join(tempDir('rd-'), 'paused');
  const records = new RecordDir<Rec>(dir, parse);
  for (const bad of ['../x', '.hidden', '', 'a/b', 'x'.repeat(64), 'a\nb']) {
    assert.throws(() => records.put(bad, { name: bad, n: 1 }), /unusable record key/, JSON.stringify(bad));
    assert.equal(records.get(bad), undefined);
    records.remove(bad);
  }
  assert.equal(RecordDir.validKey('sbx-0123abcd'), true);
});

test('what is on disk is input: links, oversized files and foreign contents are not records', () => {
  const dir = path.join(tempDir('rd-'), 'paused');
  const records = new RecordDir<Rec>(dir, parse);
  records.put('ok', { name: 'ok', n: 1 });
  const outside = path.join(path.dirname(dir), 'outside.json');
  fs.writeFileSync(outside, JSON.stringify({ name: 'link', n: 9 }));
  fs.symlinkSync(outside, path.join(dir, 'link.json'));
  fs.writeFileSync(path.join(dir, 'big.json'), JSON.stringify({ name: 'big', n: 1, pad: 'x'.repeat(300 * 1024) }));
  fs.writeFileSync(path.join(dir, 'other.json'), JSON.stringify({ name: 'not-other', n: 1 }));
  fs.writeFileSync(path.join(dir, 'garbage.json'), '{not json');
  fs.mkdirSync(path.join(dir, 'adir.json'));
  assert.equal(records.get('link'), undefined, 'a symlink is not followed');
  assert.equal(records.get('big'), undefined, 'over the size cap');
  assert.equal(records.get('other'), undefined, 'the parser refuses a record of another key');
  assert.deepEqual(records.list().map((r) => r.name), ['ok']);
});
