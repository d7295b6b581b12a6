/**
 * The `files` channel kind: file operations in the main container's file system, done by the
 * guest agent (never by running `cat` in the container). Shared by host and guest (Node
 * built-ins only).
 *
 * read:   guest sends {type:'stat', entry}, the bytes on stream 1 (flow-controlled), EOF, then
 *         {type:'result'}.
 * write:  host sends the bytes on stream 0 and EOF; the guest writes a temp file beside the
 *         target and renames it into place, creating parent directories, then {type:'result', entry}.
 * list, stat, mkdir, rename, remove: one {type:'result', ...} reply.
 * Failures: {type:'error', code, message}, code an errno name (ENOENT, EISDIR, ...) or
 * EOUTSIDE (a path that leaves the container) or ENOCONTAINER (the container does not run).
 */

export type FilesOp = 'read' | 'write' | 'list' | 'stat' | 'mkdir' | 'rename' | 'remove';

export const FILES_OPS: readonly FilesOp[] = ['read', 'write', 'list', 'stat', 'mkdir', 'rename', 'remove'];

export interface FilesRequest {
  kind: 'files';
  op: FilesOp;
  /** An absolute path as the container sees it. */
  path: string;
  /** rename: the new path. */
  to?: string;
}

export type FileType = 'file' | 'dir' | 'symlink' | 'other';

export interface FileEntry {
  name: string;
  /** The path as the container sees it. */
  path: string;
  type: FileType;
  size: number;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  /** Last modification, ISO 8601. */
  mtime: string;
}

/** Most entries one list returns (the reply is one message frame, at most 1 MiB). */
export const MAX_LIST_ENTRIES = 5000;
export const MAX_PATH_LENGTH = 4096;

/**
 * The components of a container path, or a one-line problem. Only absolute paths; `.` and
 * empty components are dropped; `..` is refused outright rather than resolved, so no request
 * can name anything above the container's root by its spelling.
 */
export function containerPathComponents(value: unknown): { components: string[] } | { problem: string } {
  if (typeof value !== 'string' || value.length === 0) return { problem: 'path is missing' };
  if (value.length > MAX_PATH_LENGTH) return { problem: `path is longer than ${MAX_PATH_LENGTH} characters` };
  if (value.includes('\0')) return { problem: 'path contains a NUL byte' };
  if (!value.startsWith('/')) return { problem: `path "${value}" is not absolute` };
  const components = value.split('/').filter((c) => c !== '' && c !== '.');
  if (components.includes('..')) return { problem: `path "${value}" is outside the container (it contains "..")` };
  return { components };
}

export function isFileEntry(value: unknown): value is FileEntry {
  if (typeof value !== 'object' || value === null) return false;
  const e = value as Record<string, unknown>;
  return (
    typeof e.name === 'string' && e.name.length <= MAX_PATH_LENGTH &&
    typeof e.path === 'string' && e.path.length <= MAX_PATH_LENGTH &&
    (e.type === 'file' || e.type === 'dir' || e.type === 'symlink' || e.type === 'other') &&
    typeof e.size === 'number' && Number.isSafeInteger(e.size) && e.size >= 0 &&
    typeof e.mode === 'number' && Number.isInteger(e.mode) &&
    typeof e.mtime === 'string' && e.mtime.length <= 64
  );
}
