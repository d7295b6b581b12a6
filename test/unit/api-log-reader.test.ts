/**
 * The API's container-log reader against crafted files (the log's bytes are the guest's): a
 * length field is never believed beyond what the writer writes, a rotation is followed by file
 * identity (not by reusing an offset in the new file), and a follow waits for a slow client.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type { ServerResponse } from 'node:http';
import { describe, it } from 'node:test';
import { LogFollower, readLog } from '../../src/api/log-reader';
import { followLogs } from '../../src/api/server';
import { ContainerLogWriter } from '../../src/supervisor/container-log';
import { CONTAINER_LOG_MAX_RECORD } from '../../src/util/log-limit';
import { tempDir } from '../helpers/temp-dir';

function record(stream: number, data: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.writeUInt8(stream, 0);
  header.writeUInt32BE(data.length, 1);
  return Buffer.concat([header, data]);
}

/** Runs fn and returns the growth of the process's memory (external + array buffers + heap). */
function memoryGrowth(fn: () => void): number {
  const before = process.memoryUsage();
  fn();
  const after = process.memoryUsage();
  return (after.external + after.arrayBuffers + after.heapUsed) - (before.external + before.arrayBuffers + before.heapUsed);
}

describe('container log reader', () => {
  it('a 64 KiB file of 0x01 is refused without allocating its length field (16 MiB+)', () => {
    const dir = tempDir('shoal-log-');
    const file = path.join(dir, 'container.log');
    fs.writeFileSync(file, Buffer.alloc(64 * 1024, 0x01));
    let once: ReturnType<typeof readLog> | undefined;
    const grew = memoryGrowth(() => { once = readLog(file, 1024 * 1024); });
    assert.equal(once!.records.length, 0);
    assert.match(once!.error ?? '', /corrupt at byte 0/);
    assert.ok(grew < 8 * 1024 * 1024, `memory grew by ${grew} bytes`);
    const follower = new LogFollower(file);
    let followed: ReturnType<LogFollower['read']> | undefined;
    const grew2 = memoryGrowth(() => { followed = follower.read(256 * 1024); });
    follower.close();
    assert.match(followed!.error ?? '', /corrupt/);
    assert.ok(grew2 < 8 * 1024 * 1024, `memory grew by ${grew2} bytes`);
  });

  it('a length of 0xffffffff is refused, a length just over the writer\'s maximum too', () => {
    const dir = tempDir('shoal-log-');
    const file = path.join(dir, 'container.log');
    fs.writeFileSync(file, Buffer.concat([record(1, Buffer.from('ok\n')), Buffer.from([1, 0xff, 0xff, 0xff, 0xff])]));
    const read = readLog(file, 1024 * 1024);
    assert.deepEqual(read.records.map((r) => r.data.toString()), ['ok\n']);
    assert.match(read.error ?? '', /corrupt at byte 8/);
    const over = Buffer.alloc(5);
    over.writeUInt8(1, 0);
    over.writeUInt32BE(CONTAINER_LOG_MAX_RECORD + 1, 1);
    fs.writeFileSync(file, over);
    assert.match(readLog(file, 1024 * 1024).error ?? '', /corrupt/);
  });

  it('the writer splits data longer than the readers accept', () => {
    const dir = tempDir('shoal-log-');
    const file = path.join(dir, 'container.log');
    const writer = new ContainerLogWriter(file, 64 * 1024 * 1024);
    writer.append(1, Buffer.alloc(CONTAINER_LOG_MAX_RECORD * 2 + 3, 0x0f));
    writer.close();
    const follower = new LogFollower(file);
    const sizes: number[] = [];
    for (;;) {
      const { records, error } = follower.read(64 * 1024);
      assert.equal(error, undefined);
      if (records.length === 0) break;
      sizes.push(...records.map((r) => r.data.length));
    }
    follower.close();
    assert.deepEqual(sizes, [CONTAINER_LOG_MAX_RECORD, CONTAINER_LOG_MAX_RECORD, 3]);
  });

  it('follows a rotation mid-follow: the rest of the old file, then the new file from its start', () => {
    const dir = tempDir('shoal-log-');
    const file = path.join(dir, 'container.log');
    // Rotation at 64 KiB (the smallest SHOAL_LOG_MAX_BYTES); records of 0x0f chunks, each numbered.
    const writer = new ContainerLogWriter(file, 64 * 1024);
    const follower = new LogFollower(file);
    const seen: string[] = [];
    let written = 0;
    const drain = (): void => {
      for (;;) {
        const { records, error } = follower.read(16 * 1024);
        assert.equal(error, undefined, `record ${seen.length}`);
        if (records.length === 0) return;
        for (const r of records) {
          assert.equal(r.stream, 'stdout');
          seen.push(r.data.subarray(0, 8).toString());
          assert.ok(r.data.subarray(8).every((b) => b === 0x0f), 'the record is what was written');
        }
      }
    };
    for (let round = 0; round < 6; round += 1) {
      // Each round writes a bit more than the limit, so the file rotates while the follower
      // holds an offset into the old one (far beyond the new file's size).
      for (let i = 0; i < 9; i += 1) {
        writer.append(1, Buffer.concat([Buffer.from(String(written).padStart(8, '0')), Buffer.alloc(8000, 0x0f)]));
        written += 1;
      }
      if (round % 2 === 0) drain();
    }
    writer.close();
    drain();
    follower.close();
    // Everything from where the follower could still see it: records rotated away twice before
    // it looked are lost (only one predecessor is kept), but none is garbled, repeated or reordered.
    const numbers = seen.map(Number);
    assert.ok(numbers.length > 9, `saw ${numbers.length}`);
    for (let i = 1; i < numbers.length; i += 1) assert.ok(numbers[i]! > numbers[i - 1]!, `in order: ${numbers.slice(i - 1, i + 1).join(', ')}`);
    assert.equal(numbers.at(-1), written - 1, 'the last record was seen');
  });

  it('a record torn in a rotated-away file ends the follow with an error', () => {
    const dir = tempDir('shoal-log-');
    const file = path.join(dir, 'container.log');
    fs.writeFileSync(file, Buffer.concat([record(2, Buffer.from('a')), record(1, Buffer.alloc(100)).subarray(0, 50)]));
    const follower = new LogFollower(file);
    assert.deepEqual(follower.read(1024).records.map((r) => r.data.toString()), ['a']);
    assert.equal(follower.read(1024).error, undefined, 'a partial record in the live file is pending');
    fs.renameSync(file, `${file}.1`);
    fs.writeFileSync(file, record(1, Buffer.from('new')));
    assert.match(follower.read(1024).error ?? '', /torn record at byte 6/);
    follower.close();
  });

  it('followLogs waits for a slow client instead of buffering the log', async () => {
    const dir = tempDir('shoal-log-');
    const file = path.join(dir, 'container.log');
    const writer = new ContainerLogWriter(file, 64 * 1024 * 1024);
    for (let i = 0; i < 64; i += 1) writer.append(1, Buffer.alloc(64 * 1024, 0x0f));
    writer.close();
    // A response that never drains: what followLogs wrote before waiting is what it holds.
    const res = new PassThrough({ highWaterMark: 16 * 1024 });
    let written = 0;
    const write = res.write.bind(res);
    res.write = ((chunk: string) => { written += Buffer.byteLength(chunk); return write(chunk); }) as typeof res.write;
    const done = followLogs(file, () => undefined, res as unknown as ServerResponse, 10);
    await new Promise((r) => setTimeout(r, 300));
    assert.ok(written < 1024 * 1024, `wrote ${written} bytes to a client that reads nothing`);
    res.destroy();
    res.emit('close');
    await done;
  });
});
