/**
 * The container's files as envd names them: core's FileEntry as envd's EntryInfo, and ListDir's
 * walk to a depth (bounded: at most MAX_WALK_ENTRIES entries, at most MAX_DEPTH deep).
 */
import type { MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import type { Core } from '../../core';
import type { FileEntry } from '../../../protocol/files';
import { FileType, type EntryInfoSchema } from './gen/filesystem/filesystem_pb';

export const MAX_WALK_ENTRIES = 10_000;
export const MAX_DEPTH = 32;

export type EntryInit = MessageInitShape<typeof EntryInfoSchema>;

const TYPES: Record<FileEntry['type'], FileType> = { file: FileType.FILE, dir: FileType.DIRECTORY, symlink: FileType.SYMLINK, other: FileType.UNSPECIFIED };

export function entryInfo(e: FileEntry): EntryInit {
  const modified = new Date(e.mtime);
  return {
    name: e.name,
    type: TYPES[e.type],
    path: e.path,
    size: BigInt(e.size),
    mode: e.mode,
    permissions: permissionString(e),
    // The agent reports no owner names; empty rather than a guess.
    owner: '',
    group: '',
    ...(Number.isNaN(modified.getTime()) ? {} : { modifiedTime: timestampFromDate(modified) }),
  };
}

/** `ls -l`'s first column (Go's FileMode.String(), as envd sends it). */
function permissionString(e: FileEntry): string {
  const kind = e.type === 'dir' ? 'd' : e.type === 'symlink' ? 'L' : '-';
  let bits = '';
  for (let i = 8; i >= 0; i--) bits += (e.mode >> i) & 1 ? 'rwx'[(8 - i) % 3] : '-';
  return kind + bits;
}

/** Entries under dir, `depth` levels deep (1: its children); symlinks are not followed. */
export async function walk(core: Core, vmId: string, dir: string, depth: number): Promise<{ entries: FileEntry[]; truncated: boolean }> {
  const out: FileEntry[] = [];
  let truncated = false;
  let level = [dir];
  for (let d = 1; d <= Math.min(depth, MAX_DEPTH) && level.length > 0; d++) {
    const next: string[] = [];
    for (const path of level) {
      let listed: { entries: FileEntry[]; truncated: boolean };
      try {
        listed = await core.files.list(vmId, path);
      } catch (err) {
        if (path === dir) throw err;
        continue; // gone (or unreadable) since its parent was listed
      }
      if (listed.truncated) truncated = true;
      for (const e of listed.entries) {
        if (out.length >= MAX_WALK_ENTRIES) return { entries: out, truncated: true };
        out.push(e);
        if (e.type === 'dir') next.push(e.path);
      }
    }
    level = next;
  }
  return { entries: out, truncated };
}
