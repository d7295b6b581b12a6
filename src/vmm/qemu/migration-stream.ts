/**
 * A filter for QEMU 7.2's migration stream that drops the pages of one RAM block and passes
 * everything else through unchanged.
 *
 * Why: a restored VM's guest RAM is a private (MAP_PRIVATE, share=off) mapping of its parent
 * snapshot's memory file, so `x-ignore-shared` does not skip it and its migration carries every
 * page. The snapshot takes those pages another way (the parent's file plus the pages the VM
 * dirtied, ./private-snapshot.ts), so only the device state is wanted: the stream minus the guest
 * RAM's pages is exactly what a first-generation snapshot's state.bin holds (its RAM block listed
 * in the setup section, no pages), and loads the same way. Pages of the other, small RAM blocks
 * (ROMs) stay in, as they do in a first-generation snapshot.
 *
 * The format (QEMU 7.2, migration/savevm.c and migration/ram.c):
 *   be32 magic "QEVM", be32 version 3, then the configuration section (a vmstate blob without a
 *   length), then sections: START(1)/FULL(4) = type, be32 id, u8 len, idstr, be32 instance,
 *   be32 version, body; PART(2)/END(3) = type, be32 id, body; each body followed by a footer
 *   (0x7e, be32 id). Only "ram" is iterative here, so its START comes first, its PART sections
 *   follow, its END comes before every FULL (device) section, and EOF(5) ends the stream.
 *   A RAM body is records: be64 (offset | flags); without CONTINUE (0x20) a u8 len and the block's
 *   idstr follow; ZERO (0x02) carries one byte, PAGE (0x08) 4096; MEM_SIZE (0x04, setup only)
 *   lists the blocks (u8 len, idstr, be64 used_length, be64 address with x-ignore-shared);
 *   EOS (0x10) ends the body.
 * The configuration and device sections cannot be parsed without QEMU's vmstate descriptions,
 * so the filter finds RAM's START by its exact header and passes all that follows RAM's END
 * through verbatim. Anything else it does not expect fails the filter: a snapshot from a stream
 * it misread would be worse than none.
 */
import { Transform, type TransformCallback } from 'node:stream';

const MAGIC = 0x5145564d; // "QEVM"
const VERSION = 3;
const PAGE_SIZE = 4096;
const FLAG_MASK = 0xfff;

const SECTION_START = 0x01;
const SECTION_PART = 0x02;
const SECTION_END = 0x03;
const SECTION_FULL = 0x04;
const VM_EOF = 0x05;
const SECTION_FOOTER = 0x7e;

const RAM_ZERO = 0x02;
const RAM_MEM_SIZE = 0x04;
const RAM_PAGE = 0x08;
const RAM_EOS = 0x10;
const RAM_CONTINUE = 0x20;

/** RAM's START header after its section id: u8 3, "ram", be32 instance 0, be32 version 4. */
const RAM_START_TAIL = Buffer.from([0x03, 0x72, 0x61, 0x6d, 0, 0, 0, 0, 0, 0, 0, 4]);
/**
 * What is kept (device state, ROM pages) is under 1 MiB for a microvm; a QEMU that sends more
 * than this is not doing what we asked, and must not fill the disk with it.
 */
const KEPT_LIMIT = 64 * 1024 * 1024;
/** The configuration section is a few hundred bytes; a stream without RAM's START by then is not one we know. */
const PREAMBLE_LIMIT = 64 * 1024;

export interface FilterStats {
  /** Pages of the dropped block that the stream carried (zero pages included). */
  droppedPages: number;
  /** Pages of other blocks kept. */
  keptPages: number;
}

type Phase = 'header' | 'preamble' | 'ram-body' | 'section' | 'passthrough';

export class RamPageFilter extends Transform {
  readonly stats: FilterStats = { droppedPages: 0, keptPages: 0 };
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private phase: Phase = 'header';
  private ramSectionId = -1;
  /** RAM body kind: the setup body lists blocks; later bodies carry pages. */
  private inSetup = false;
  /** The block a CONTINUE record refers to, as the source sent it. */
  private lastBlock: string | undefined;
  private ramEnded = false;
  private keptBytes = 0;

  /**
   * @param droppedBlock the idstr of the RAM block whose pages are dropped ("ram")
   * @param droppedBytes its size: the stream's block list must say the same, or it is not the VM we think
   */
  constructor(private readonly droppedBlock: string, private readonly droppedBytes: number) {
    super();
  }

  /** Passes bytes on, within KEPT_LIMIT. */
  override push(chunk: Buffer | null): boolean {
    if (chunk !== null) {
      this.keptBytes += chunk.length;
      if (this.keptBytes > KEPT_LIMIT) {
        this.destroy(new Error(`the device state is over ${KEPT_LIMIT >> 20} MiB`));
        return false;
      }
    }
    return super.push(chunk);
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (this.phase === 'passthrough') {
      this.push(chunk);
      callback();
      return;
    }
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    try {
      this.parse();
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    if (this.phase !== 'passthrough') {
      callback(new Error(`the migration stream ended early (in ${this.phase})`));
      return;
    }
    callback();
  }

  private parse(): void {
    for (;;) {
      switch (this.phase) {
        case 'header': {
          const header = this.takeBytes(8);
          if (!header) return;
          if (header.readUInt32BE(0) !== MAGIC || header.readUInt32BE(4) !== VERSION) throw new Error('not a QEMU migration stream (version 3)');
          this.push(header);
          this.phase = 'preamble';
          break;
        }
        case 'preamble': {
          const all = this.peekAllBytes();
          const at = findRamStart(all);
          if (at < 0) {
            if (all.length > PREAMBLE_LIMIT) throw new Error('no RAM section at the start of the migration stream');
            return;
          }
          const through = at + 5 + RAM_START_TAIL.length;
          this.ramSectionId = all.readUInt32BE(at + 1);
          this.push(this.takeBytes(through)!);
          this.inSetup = true;
          this.phase = 'ram-body';
          break;
        }
        case 'ram-body':
          if (!this.ramRecord()) return;
          break;
        case 'section':
          if (!this.sectionHeader()) return;
          break;
        case 'passthrough': {
          const rest = this.peekAllBytes();
          this.pending = [];
          this.pendingBytes = 0;
          if (rest.length > 0) this.push(rest);
          return;
        }
      }
    }
  }

  /** One RAM record; false when more bytes are needed. */
  private ramRecord(): boolean {
    const head = this.peekBytes(8);
    if (!head) return false;
    const word = head.readBigUInt64BE(0);
    const flags = Number(word & BigInt(FLAG_MASK));
    if (flags === RAM_EOS) {
      this.push(this.takeBytes(8)!);
      return this.afterBody();
    }
    if (flags & RAM_MEM_SIZE) {
      if (!this.inSetup) throw new Error('a RAM block list outside the setup section');
      return this.blockList(Number(word & ~BigInt(FLAG_MASK)));
    }
    const kind = flags & ~RAM_CONTINUE;
    if (kind !== RAM_ZERO && kind !== RAM_PAGE) throw new Error(`unexpected RAM record flags 0x${flags.toString(16)} (compression or XBZRLE is not expected)`);
    let length = 8;
    let block = this.lastBlock;
    if (!(flags & RAM_CONTINUE)) {
      const withLen = this.peekBytes(9);
      if (!withLen) return false;
      const nameLength = withLen[8]!;
      const named = this.peekBytes(9 + nameLength);
      if (!named) return false;
      block = named.toString('latin1', 9, 9 + nameLength);
      length = 9 + nameLength;
    }
    if (block === undefined) throw new Error('a RAM record continues no block');
    length += kind === RAM_ZERO ? 1 : PAGE_SIZE;
    const record = this.takeBytes(length);
    if (!record) return false;
    this.lastBlock = block;
    if (block === this.droppedBlock) {
      this.stats.droppedPages++;
    } else {
      this.stats.keptPages++;
      this.push(record);
    }
    return true;
  }

  /** The setup section's list of blocks: kept whole (the destination checks it). */
  private blockList(totalBytes: number): boolean {
    // be64 total, then per block: u8 len, idstr, be64 used_length, be64 address (x-ignore-shared).
    let at = 8;
    let remaining = totalBytes;
    let found = false;
    while (remaining > 0) {
      const lenByte = this.peekBytes(at + 1);
      if (!lenByte) return false;
      const nameLength = lenByte[at]!;
      const entry = this.peekBytes(at + 1 + nameLength + 16);
      if (!entry) return false;
      const used = Number(entry.readBigUInt64BE(at + 1 + nameLength));
      if (used <= 0 || used > remaining) throw new Error('a RAM block list that does not add up');
      if (entry.toString('latin1', at + 1, at + 1 + nameLength) === this.droppedBlock) {
        if (used !== this.droppedBytes) throw new Error(`RAM block ${this.droppedBlock} has ${used} bytes, not ${this.droppedBytes}`);
        found = true;
      }
      remaining -= used;
      at += 1 + nameLength + 16;
    }
    if (!found) throw new Error(`no RAM block ${this.droppedBlock} in the migration stream`);
    this.push(this.takeBytes(at)!);
    return true;
  }

  /** After a RAM body's EOS: its footer, then the next section. */
  private afterBody(): boolean {
    this.inSetup = false;
    this.phase = 'section';
    return true;
  }

  /** A footer or the next section's header; false when more bytes are needed. */
  private sectionHeader(): boolean {
    const type = this.peekBytes(1);
    if (!type) return false;
    switch (type[0]) {
      case SECTION_FOOTER: {
        const footer = this.takeBytes(5);
        if (!footer) return false;
        if (footer.readUInt32BE(1) !== this.ramSectionId) throw new Error('a section footer for a section other than RAM\'s');
        this.push(footer);
        if (this.ramEnded) this.phase = 'passthrough';
        return true;
      }
      case SECTION_PART:
      case SECTION_END: {
        const header = this.takeBytes(5);
        if (!header) return false;
        if (header.readUInt32BE(1) !== this.ramSectionId) throw new Error('an iterative section other than RAM\'s (not expected on this machine)');
        this.push(header);
        if (type[0] === SECTION_END) this.ramEnded = true;
        this.phase = 'ram-body';
        return true;
      }
      case SECTION_START:
      case SECTION_FULL:
      case VM_EOF:
        // Device sections: opaque, and nothing of RAM's may follow them.
        if (!this.ramEnded) throw new Error('device state before the end of RAM\'s section');
        this.phase = 'passthrough';
        return true;
      default:
        throw new Error(`unexpected section type 0x${type[0]!.toString(16)} in the migration stream`);
    }
  }

  private peekAllBytes(): Buffer {
    if (this.pending.length !== 1) this.pending = [Buffer.concat(this.pending, this.pendingBytes)];
    return this.pending[0] ?? Buffer.alloc(0);
  }

  /** The first n pending bytes without consuming them, or undefined when fewer are pending. */
  private peekBytes(n: number): Buffer | undefined {
    if (this.pendingBytes < n) return undefined;
    const first = this.pending[0]!;
    if (first.length >= n) return first;
    return this.peekAllBytes();
  }

  private takeBytes(n: number): Buffer | undefined {
    const head = this.peekBytes(n);
    if (!head) return undefined;
    const taken = head.subarray(0, n);
    const rest = head.subarray(n);
    if (rest.length > 0) this.pending[0] = rest;
    else this.pending.shift();
    this.pendingBytes -= n;
    return taken;
  }
}

/** Offset of RAM's START section header (type byte) in buf, or -1. */
function findRamStart(buf: Buffer): number {
  for (let from = 0; ;) {
    const tail = buf.indexOf(RAM_START_TAIL, from);
    if (tail < 0) return -1;
    if (tail >= 5 && buf[tail - 5] === SECTION_START) return tail - 5;
    from = tail + 1;
  }
}
