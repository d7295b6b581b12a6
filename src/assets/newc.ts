/**
 * A writer for the cpio "newc" format the kernel unpacks as an initramfs.
 * Written in TS rather than shelling out to cpio(1) so the archive is
 * deterministic (uid/gid 0, fixed mtime, sorted) and can hold device nodes
 * without mknod on the host.
 */

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Buffer; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char'; path: string; major: number; minor: number; mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, '0');
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

function normalise(p: string): string {
  return p.replace(/^\/+/, '').replace(/\/+$/, '');
}

/**
 * Builds a newc archive. Parent directories are added automatically, entries
 * are sorted so a directory always precedes its contents, and a later entry
 * for the same path replaces an earlier one.
 */
export function buildNewc(entries: readonly CpioEntry[], mtime = 0): Buffer {
  const byPath = new Map<string, CpioEntry>();
  for (const e of entries) {
    const p = normalise(e.path);
    if (!p) continue;
    const parts = p.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!byPath.has(d)) byPath.set(d, { type: 'dir', path: d });
    }
    byPath.set(p, { ...e, path: p });
  }
  const paths = [...byPath.keys()].sort();
  const chunks: Buffer[] = [];
  let ino = 1;
  const push = (name: string, mode: number, data: Buffer, rmaj = 0, rmin = 0, nlink = 1): void => {
    const nameBuf = Buffer.from(name + '\0', 'utf8');
    const header =
      '070701' +
      hex8(ino++) +
      hex8(mode) +
      hex8(0) + // uid
      hex8(0) + // gid
      hex8(nlink) +
      hex8(mtime) +
      hex8(data.length) +
      hex8(0) + // devmajor
      hex8(0) + // devminor
      hex8(rmaj) +
      hex8(rmin) +
      hex8(nameBuf.length) +
      hex8(0); // check
    chunks.push(Buffer.from(header, 'ascii'), nameBuf, Buffer.alloc(pad4(110 + nameBuf.length)));
    if (data.length) chunks.push(data, Buffer.alloc(pad4(data.length)));
  };
  for (const p of paths) {
    const e = byPath.get(p)!;
    switch (e.type) {
      case 'dir':
        push(p, S_IFDIR | (e.mode ?? 0o755), Buffer.alloc(0), 0, 0, 2);
        break;
      case 'file':
        push(p, S_IFREG | (e.mode ?? 0o644), e.data);
        break;
      case 'symlink':
        push(p, S_IFLNK | 0o777, Buffer.from(e.target, 'utf8'));
        break;
      case 'char':
        push(p, S_IFCHR | (e.mode ?? 0o600), Buffer.alloc(0), e.major, e.minor);
        break;
    }
  }
  ino = 0;
  push('TRAILER!!!', 0, Buffer.alloc(0), 0, 0, 1);
  const out = Buffer.concat(chunks);
  // Pad the archive to a 512-byte multiple, as cpio(1) does.
  return Buffer.concat([out, Buffer.alloc((512 - (out.length % 512)) % 512)]);
}
