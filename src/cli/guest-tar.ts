/**
 * Unpacking a tar stream the guest made (`shoal cp NAME:PATH DEST`), in this process with the
 * `tar` package, into a private staging directory.
 *
 * The guest shapes the tar (a privileged container, or any guest root, can put anything in it),
 * and host root unpacks it, so only what podman cp has a reason to carry across a VM boundary is
 * created: regular files, directories, symbolic links (as links, never followed) and hard links
 * to members already unpacked. Devices, FIFOs and anything else are skipped with one line each
 * on stderr, as are names that are absolute or climb with `..` (podman never sends those).
 *
 * Every member is created owner-only (files 0600, directories 0700) and owned by the caller; its
 * own mode, less set-id and sticky bits, and its times are applied by `settleModes` once the
 * stream is complete, by a walk that descends only into real directories. So no set-id file
 * exists at any moment, and the staging directory itself is never chmodded: an entry naming the
 * archive's root (`./`, mode 0777) is ignored, and the staging directory stays 0700 until its
 * members are moved into place.
 */
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { Unpack, type ReadEntry } from 'tar';

/** What a member asked for, applied after the stream is complete. */
interface MemberMeta {
  mode: number;
  atime: Date;
  mtime: Date;
  /** A symbolic link's target, set after unpacking. */
  symlinkTarget?: string;
}

export interface GuestTarUnpack {
  /** Where the guest's bytes go (flow-controlled: it waits while unpacking lags). */
  sink: Writable;
  /** Settles once the stream ended and every member is on disk; rejects if the tar was bad. */
  done: Promise<void>;
  /** Applies the members' modes (less set-id/sticky) and times; call after `done`. */
  settleModes(): void;
}

const KIND: Record<string, string> = {
  CharacterDevice: 'a character device',
  BlockDevice: 'a block device',
  FIFO: 'a FIFO',
};

/** Member types that are created; every other type is skipped. */
const CREATED = new Set(['File', 'OldFile', 'ContiguousFile', 'Directory', 'SymbolicLink', 'Link']);

/** The member's name relative to the staging directory ('' for the root), or null if it is not a plain relative path. */
export function memberName(name: string): string | null {
  if (name.startsWith('/') || name.includes('\0')) return null;
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) return null;
  return parts.join('/');
}

/** `onSkip` gets one line per member that is not created (without a trailing newline). */
export function unpackGuestTar(dir: string, onSkip: (line: string) => void): GuestTarUnpack {
  const meta = new Map<string, MemberMeta | 'link'>();
  let failure: Error | undefined;
  const filter = (name: string, entry: ReadEntry): boolean => {
    const rel = memberName(name);
    if (rel === null) {
      onSkip(`skipped ${JSON.stringify(name)}: not a relative path inside the copy`);
      return false;
    }
    if (!CREATED.has(entry.type)) {
      onSkip(`skipped ${rel}: ${KIND[entry.type] ?? `a ${entry.type} entry`} (only regular files, directories and symbolic links are copied)`);
      return false;
    }
    // The root of the copy is the staging directory itself: its mode and times are not the guest's to set.
    if (rel === '') return false;
    if (entry.type === 'Link' && (entry.linkpath === undefined || memberName(entry.linkpath) === null)) {
      onSkip(`skipped ${rel}: a hard link to ${JSON.stringify(entry.linkpath ?? '')}, outside the copy`);
      return false;
    }
    // A hard link is another name of a member already unpacked: that member's mode and times rule.
    if (entry.type === 'Link') {
      meta.set(rel, 'link');
      return true;
    }
    const isDir = entry.type === 'Directory';
    const mtime = entry.mtime ?? new Date();
    const member: MemberMeta = { mode: (entry.mode ?? (isDir ? 0o755 : 0o644)) & 0o777, atime: entry.atime ?? mtime, mtime };
    if (entry.type === 'SymbolicLink') {
      // tar would strip a leading '/' from the target and refuse one that climbs out of the
      // copy; podman keeps both (a link is never followed here). So tar makes the link with a
      // harmless target and settleModes gives it the real one.
      member.symlinkTarget = entry.linkpath ?? '';
      entry.linkpath = '.';
    }
    meta.set(rel, member);
    // Created owner-only; settleModes gives it its own mode (never set-id) once all is unpacked.
    entry.mode = isDir ? 0o700 : 0o600;
    return true;
  };
  const unpack = new Unpack({
    cwd: dir,
    preserveOwner: false,
    filter: filter as (name: string, entry: ReadEntry | fs.Stats) => boolean,
    onwarn: (code, message) => {
      if (code !== 'TAR_ENTRY_INFO') failure ??= new Error(String(message));
    },
  });
  let pending: (() => void) | null = null;
  const release = (): void => {
    const next = pending;
    pending = null;
    next?.();
  };
  const done = new Promise<void>((resolve, reject) => {
    unpack.on('error', (err: Error) => {
      failure ??= err;
      release();
      reject(failure);
    });
    unpack.on('finish', () => (failure ? reject(failure) : resolve()));
  });
  done.catch(() => undefined); // observed by the caller after the transfer
  unpack.on('drain', release);
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      // After a failure the rest is drained and dropped, so the guest's side can finish.
      if (failure || unpack.write(chunk)) return callback();
      pending = () => callback();
    },
    final(callback) {
      unpack.end();
      callback();
    },
  });
  return { sink, done, settleModes: () => settleModes(dir, meta) };
}

/**
 * Post-order walk of the staging directory: each member gets the mode it asked for (set-id and
 * sticky bits already gone) and a directory its times (after its children changed them). Only
 * real directories are descended into, and the staging directory itself is left as it is.
 */
function settleModes(root: string, meta: Map<string, MemberMeta | 'link'>): void {
  const walk = (rel: string): void => {
    const abs = rel === '' ? root : path.join(root, rel);
    const st = fs.lstatSync(abs);
    if (st.isDirectory()) for (const name of fs.readdirSync(abs)) walk(rel === '' ? name : `${rel}/${name}`);
    if (rel === '') return;
    const found = meta.get(rel);
    if (found === 'link') return;
    const m = found;
    if (st.isSymbolicLink()) {
      if (m?.symlinkTarget !== undefined) {
        fs.unlinkSync(abs);
        fs.symlinkSync(m.symlinkTarget, abs);
      }
      if (m) fs.lutimesSync(abs, m.atime, m.mtime);
      return;
    }
    if (!st.isFile() && !st.isDirectory()) {
      // Never created (the filter lets none through); if one were there, it is not moved on.
      fs.rmSync(abs, { force: true });
      return;
    }
    // Directories tar made as parents of a member, without an entry of their own, get 0755.
    fs.chmodSync(abs, m?.mode ?? (st.isDirectory() ? 0o755 : 0o644));
    if (m && st.isDirectory()) fs.utimesSync(abs, m.atime, m.mtime);
  };
  walk('');
}
