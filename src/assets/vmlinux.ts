/**
 * Extracts the uncompressed ELF vmlinux (what Firecracker boots on x86_64)
 * from a bzImage, like the kernel's scripts/extract-vmlinux: locate the
 * compressed payload (from the boot protocol header when it is valid, else by
 * searching for a compressor's magic), decompress it with the matching
 * decoder, and keep the first result that is an ELF image.
 */
import { spawn } from 'node:child_process';
import zlib from 'node:zlib';
import { ShoalError } from '../util/errors';

interface Codec {
  name: string;
  magic: Buffer;
  decode(payload: Buffer): Promise<Buffer>;
}

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

export function isElf(b: Buffer): boolean {
  return b.length > 4 && b.subarray(0, 4).equals(ELF_MAGIC);
}

/** Runs a decompressor over input; returns whatever it wrote even when it complains about trailing data. */
function pipeThrough(cmd: string, args: string[], input: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'ignore'] });
    const out: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.on('error', (e) => reject(new ShoalError(`cannot run ${cmd} to unpack the kernel: ${e.message}`)));
    child.on('close', () => resolve(Buffer.concat(out)));
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

// ------------------------------------------------------------------ LZ4 (legacy frame, as the kernel uses)

const LZ4_LEGACY_MAGIC = 0x184c2102;
const LZ4_LEGACY_BLOCK = 8 << 20;

/** Decodes one raw LZ4 block src[s..end) into dst starting at 0; returns the bytes written. */
export function lz4DecodeBlock(src: Buffer, s: number, end: number, dst: Buffer): number {
  let d = 0;
  while (s < end) {
    const token = src[s++]!;
    let lit = token >>> 4;
    if (lit === 15) {
      let b: number;
      do {
        b = src[s++]!;
        lit += b;
      } while (b === 255 && s < end);
    }
    if (s + lit > end || d + lit > dst.length) throw new ShoalError('lz4: corrupt block (literal overrun)');
    src.copy(dst, d, s, s + lit);
    s += lit;
    d += lit;
    if (s >= end) break; // last sequence has literals only
    const offset = src[s]! | (src[s + 1]! << 8);
    s += 2;
    if (offset === 0 || offset > d) throw new ShoalError('lz4: corrupt block (bad offset)');
    let mlen = token & 15;
    if (mlen === 15) {
      let b: number;
      do {
        b = src[s++]!;
        mlen += b;
      } while (b === 255 && s < end);
    }
    mlen += 4;
    if (d + mlen > dst.length) throw new ShoalError('lz4: corrupt block (match overrun)');
    let from = d - offset;
    if (offset >= mlen) {
      dst.copy(dst, d, from, from + mlen);
      d += mlen;
    } else {
      for (let i = 0; i < mlen; i++) dst[d++] = dst[from++]!;
    }
  }
  return d;
}

/** Decodes an LZ4 legacy-format stream, stopping at trailing data that is not a block. */
export function lz4LegacyDecode(buf: Buffer): Buffer {
  if (buf.length < 4 || buf.readUInt32LE(0) !== LZ4_LEGACY_MAGIC) throw new ShoalError('lz4: not a legacy frame');
  const parts: Buffer[] = [];
  let s = 4;
  while (s + 4 <= buf.length) {
    const size = buf.readUInt32LE(s);
    if (size === LZ4_LEGACY_MAGIC) {
      s += 4; // concatenated frame
      continue;
    }
    if (size === 0 || s + 4 + size > buf.length) break; // trailer (e.g. the kernel's appended size)
    const dst = Buffer.allocUnsafe(LZ4_LEGACY_BLOCK);
    const n = lz4DecodeBlock(buf, s + 4, s + 4 + size, dst);
    parts.push(dst.subarray(0, n));
    s += 4 + size;
  }
  return Buffer.concat(parts);
}

// ------------------------------------------------------------------ codecs

const CODECS: Codec[] = [
  { name: 'gzip', magic: Buffer.from([0x1f, 0x8b, 0x08]), decode: async (p) => zlib.gunzipSync(p, { finishFlush: zlib.constants.Z_SYNC_FLUSH }) },
  { name: 'lz4', magic: Buffer.from([0x02, 0x21, 0x4c, 0x18]), decode: async (p) => lz4LegacyDecode(p) },
  { name: 'xz', magic: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), decode: (p) => pipeThrough('xz', ['-dc', '--single-stream'], p) },
  { name: 'zstd', magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]), decode: (p) => pipeThrough('zstd', ['-dcq'], p) },
  { name: 'bzip2', magic: Buffer.from('BZh'), decode: (p) => pipeThrough('bzip2', ['-dc'], p) },
  { name: 'lzma', magic: Buffer.from([0x5d, 0x00, 0x00, 0x00]), decode: (p) => pipeThrough('xz', ['-dc', '--format=lzma'], p) },
  { name: 'lzo', magic: Buffer.from([0x89, 0x4c, 0x5a, 0x4f]), decode: (p) => pipeThrough('lzop', ['-dc'], p) },
];

/** The compressed payload named by the x86 boot protocol header, or null when the header is not usable. */
export function bzImagePayload(img: Buffer): Buffer | null {
  if (img.length < 0x250 || img.toString('latin1', 0x202, 0x206) !== 'HdrS') return null;
  const version = img.readUInt16LE(0x206);
  if (version < 0x208) return null; // payload fields arrived in boot protocol 2.08
  let setupSects = img[0x1f1]!;
  if (setupSects === 0) setupSects = 4;
  const pm = (setupSects + 1) * 512;
  const off = img.readUInt32LE(0x248);
  const len = img.readUInt32LE(0x24c);
  if (pm + off + len > img.length || len === 0) return null;
  return img.subarray(pm + off, pm + off + len);
}

/** Extracts vmlinux from a bzImage; returns the codec used and the ELF bytes. */
export async function extractVmlinux(bzImage: Buffer): Promise<{ codec: string; elf: Buffer }> {
  const tried: string[] = [];
  const payload = bzImagePayload(bzImage);
  if (payload) {
    for (const c of CODECS) {
      if (!payload.subarray(0, c.magic.length).equals(c.magic)) continue;
      tried.push(`${c.name}@header`);
      try {
        const out = await c.decode(payload);
        if (isElf(out)) return { codec: c.name, elf: out };
      } catch {
        /* fall back to scanning */
      }
    }
  }
  // Fallback: every occurrence of every magic, as scripts/extract-vmlinux does.
  for (const c of CODECS) {
    let pos = bzImage.indexOf(c.magic);
    let attempts = 0;
    while (pos >= 0 && attempts < 8) {
      attempts++;
      tried.push(`${c.name}@${pos}`);
      try {
        const out = await c.decode(bzImage.subarray(pos));
        if (isElf(out)) return { codec: c.name, elf: out };
      } catch {
        /* next */
      }
      pos = bzImage.indexOf(c.magic, pos + 1);
    }
  }
  throw new ShoalError(`cannot extract vmlinux from the kernel image (tried ${tried.slice(0, 6).join(', ')})`);
}
