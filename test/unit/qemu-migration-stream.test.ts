/**
 * The migration-stream filter of a restored VM's snapshot (src/vmm/qemu/migration-stream.ts), on
 * streams laid out as QEMU 7.2 writes them (migration/savevm.c, migration/ram.c): the guest RAM
 * block's pages go, everything else stays byte for byte, and a stream it does not understand
 * fails it. A real QEMU's stream is filtered in test/e2e/qemu-private-snapshot.test.ts.
 */
import assert from 'node:assert/strict';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { test } from 'node:test';
import { RamPageFilter } from '../../src/vmm/qemu/migration-stream';

const RAM_ID = 2;
const GUEST = 'ram';
const GUEST_BYTES = 64 * 4096;

const u8 = (v: number): Buffer => Buffer.from([v]);
const be32 = (v: number): Buffer => { const b = Buffer.alloc(4); b.writeUInt32BE(v); return b; };
const be64 = (v: number | bigint): Buffer => { const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(v)); return b; };
const str = (s: string): Buffer => Buffer.concat([u8(s.length), Buffer.from(s, 'latin1')]);

const header = Buffer.concat([be32(0x5145564d), be32(3)]);
/** A configuration section: opaque to the filter (vmstate without a length). */
const configuration = Buffer.concat([u8(0x07), be32(7), Buffer.from('microvm'), u8(0x05), str('configuration/capabilities'), be32(1), be32(1), str('x-ignore-shared')]);
const ramStart = Buffer.concat([u8(0x01), be32(RAM_ID), str('ram'), be32(0), be32(4)]);
const blockList = Buffer.concat([
  be64((GUEST_BYTES + 4096) | 0x04),
  str(GUEST), be64(GUEST_BYTES), be64(0),
  str('pc.bios'), be64(4096), be64(0xfffff000),
]);
const eos = be64(0x10);
const footer = (id = RAM_ID): Buffer => Buffer.concat([u8(0x7e), be32(id)]);
const page = (offset: number, block: string | undefined, fill: number): Buffer => Buffer.concat([be64(offset | 0x08 | (block ? 0 : 0x20)), block ? str(block) : Buffer.alloc(0), Buffer.alloc(4096, fill)]);
const zero = (offset: number, block: string | undefined): Buffer => Buffer.concat([be64(offset | 0x02 | (block ? 0 : 0x20)), block ? str(block) : Buffer.alloc(0), u8(0)]);
const part = (...records: Buffer[]): Buffer => Buffer.concat([u8(0x02), be32(RAM_ID), ...records, eos, footer()]);
const end = (...records: Buffer[]): Buffer => Buffer.concat([u8(0x03), be32(RAM_ID), ...records, eos, footer()]);
/** Device sections and EOF: passed through unparsed. */
const devices = Buffer.concat([u8(0x04), be32(9), str('serial'), be32(0), be32(1), Buffer.from([1, 2, 3, 0x02, 0x7e]), u8(0x05)]);

async function filter(stream: Buffer, chunk = 997): Promise<{ out: Buffer; filter: RamPageFilter }> {
  const pieces: Buffer[] = [];
  for (let i = 0; i < stream.length; i += chunk) pieces.push(stream.subarray(i, i + chunk));
  const out: Buffer[] = [];
  const f = new RamPageFilter(GUEST, GUEST_BYTES);
  await pipeline(Readable.from(pieces), f, new Writable({ write(c: Buffer, _e, cb) { out.push(c); cb(); } }));
  return { out: Buffer.concat(out), filter: f };
}

test('the guest RAM\'s pages are dropped; setup, other blocks\' pages and device state stay as they were', async () => {
  const stream = Buffer.concat([
    header, configuration, ramStart, blockList, eos, footer(),
    part(page(0, GUEST, 1), page(4096, undefined, 2), zero(8192, undefined), page(0, 'pc.bios', 9), zero(3 * 4096, GUEST), page(4 * 4096, undefined, 3)),
    part(),
    end(page(5 * 4096, GUEST, 4), page(0, 'pc.bios', 8)),
    devices,
  ]);
  const expected = Buffer.concat([
    header, configuration, ramStart, blockList, eos, footer(),
    // pc.bios's records: the first names its block, as in the source stream.
    part(page(0, 'pc.bios', 9)),
    part(),
    end(page(0, 'pc.bios', 8)),
    devices,
  ]);
  for (const chunk of [1, 7, 997, 65536]) {
    const { out, filter: f } = await filter(stream, chunk);
    assert.ok(out.equals(expected), `chunk ${chunk}`);
    assert.deepEqual(f.stats, { droppedPages: 6, keptPages: 2 });
  }
});

test('a record that continues another block after the guest RAM keeps its CONTINUE meaning', async () => {
  // CONTINUE means "the block of the record before": kept records only ever follow kept ones.
  const stream = Buffer.concat([header, configuration, ramStart, blockList, eos, footer(), end(page(0, 'pc.bios', 5), zero(0, undefined), page(0, GUEST, 1), zero(4096, undefined)), devices]);
  const { out } = await filter(stream);
  assert.ok(out.equals(Buffer.concat([header, configuration, ramStart, blockList, eos, footer(), end(page(0, 'pc.bios', 5), zero(0, undefined)), devices])));
});

test('streams it does not understand fail the filter', async () => {
  const cases: Array<[string, Buffer, RegExp]> = [
    ['not a migration stream', Buffer.concat([be32(0x12345678), be32(3), Buffer.alloc(100)]), /not a QEMU migration stream/],
    ['ends early', Buffer.concat([header, configuration, ramStart, blockList, eos, footer(), part(page(0, GUEST, 1))]), /ended early/],
    ['XBZRLE page', Buffer.concat([header, configuration, ramStart, blockList, eos, footer(), u8(0x02), be32(RAM_ID), be64(0x40), str(GUEST), Buffer.alloc(64)]), /unexpected RAM record flags 0x40/],
    ['another iterative section', Buffer.concat([header, configuration, ramStart, blockList, eos, footer(), u8(0x02), be32(5), eos]), /iterative section other than RAM/],
    ['device state before RAM ends', Buffer.concat([header, configuration, ramStart, blockList, eos, footer(), devices]), /before the end of RAM/],
    ['guest RAM of another size', Buffer.concat([header, configuration, ramStart, be64(8192 | 0x04), str(GUEST), be64(8192), be64(0), eos]), /has 8192 bytes/],
    ['no guest RAM block', Buffer.concat([header, configuration, ramStart, be64(4096 | 0x04), str('pc.bios'), be64(4096), be64(0), eos]), /no RAM block ram/],
    ['no RAM section', Buffer.concat([header, Buffer.alloc(70_000)]), /no RAM section/],
    ['endless device state', Buffer.concat([header, configuration, ramStart, blockList, eos, footer(), end(), devices, Buffer.alloc(65 * 1024 * 1024)]), /device state is over 64 MiB/],
  ];
  for (const [what, stream, error] of cases) {
    await assert.rejects(filter(stream), error, what);
  }
});
