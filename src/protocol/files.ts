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
 * watch:  the guest watches the directory with inotify (fs.watch; one watch per directory when
 *         `recursive`, directories made later included) and answers {type:'watching', dirs}, then
 *         sends {type:'events', events: WatchEvent[]} batches (at most WATCH_BATCH_EVENTS and
 *         WATCH_BATCH_BYTES each) and {type:'overflow', dropped} when it dropped events; it ends
 *         with {type:'error', ...} (the directory went away, too many directories) or when the
 *         host closes the channel, which removes every inotify watch of it.
 *         A files op rather than a channel kind of its own: it resolves its path exactly as the
 *         other file operations do (in the container's root), and the supervisor's files relay,
 *         the control request's checks and the host's error replies serve it unchanged. An agent
 *         older than it answers {type:'error', code:'EINVAL', message:'unknown files operation
 *         watch'}, which is how the host tells it needs its polling fallback.
 * Failures: {type:'error', code, message}, code an errno name (ENOENT, EISDIR, ...) or
 * EOUTSIDE (a path that leaves the container) or ENOCONTAINER (the container does not run).
 */

export type FilesOp = 'read' | 'write' | 'list' | 'stat' | 'mkdir' | 'rename' | 'remove' | 'watch';

export const FILES_OPS: readonly FilesOp[] = ['read', 'write', 'list', 'stat', 'mkdir', 'rename', 'remove', 'watch'];

export interface FilesRequest {
  kind: 'files';
  op: FilesOp;
  /** An absolute path as the container sees it. */
  path: string;
  /** rename: the new path. */
  to?: string;
  /** watch: the subdirectories too (each its own inotify watch, at most WATCH_MAX_DIRS). */
  recursive?: boolean;
}

/**
 * What happened to a name, as envd reports fsnotify's ops: create (IN_CREATE, IN_MOVED_TO),
 * write (IN_MODIFY), remove (IN_DELETE), rename (IN_MOVED_FROM), chmod (IN_ATTRIB). fs.watch
 * folds these into 'rename' and 'change', so the agent tells them apart with an lstat after the
 * event (src/agent/watch.ts has the mapping and where it differs from fsnotify's).
 */
export type WatchOp = 'create' | 'write' | 'remove' | 'rename' | 'chmod';

export const WATCH_OPS: readonly WatchOp[] = ['create', 'write', 'remove', 'rename', 'chmod'];

export interface WatchEvent {
  /** The path relative to the watched directory ('sub/a.txt'), never absolute, no `..`. */
  name: string;
  op: WatchOp;
  /** create, write, chmod: the entry as the agent's lstat after the event saw it. */
  entry?: FileEntry;
}

/** Most watches the agent keeps at once (all hosts of the VM together). */
export const WATCH_MAX_PER_VM = 64;
/** Most directories one recursive watch covers (one inotify watch each). */
export const WATCH_MAX_DIRS = 1024;
/** Most events in one 'events' message, and about most bytes of JSON in it (a frame is 1 MiB). */
export const WATCH_BATCH_EVENTS = 256;
export const WATCH_BATCH_BYTES = 512 * 1024;

/** A watch event from a message, or undefined when it is not a sane one (the guest is not trusted). */
export function watchEventOf(value: unknown): WatchEvent | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const e = value as Record<string, unknown>;
  const op = WATCH_OPS.find((o) => o === e.op);
  if (!op || typeof e.name !== 'string' || !isRelativeName(e.name)) return undefined;
  if (e.entry !== undefined && !isFileEntry(e.entry)) return undefined;
  return e.entry !== undefined ? { name: e.name, op, entry: e.entry as FileEntry } : { name: e.name, op };
}

/** A name below a directory: relative, at most MAX_PATH_LENGTH, no NUL, no empty, `.` or `..` component. */
export function isRelativeName(name: string): boolean {
  if (name.length === 0 || name.length > MAX_PATH_LENGTH || name.includes('\0') || name.startsWith('/')) return false;
  return name.split('/').every((c) => c !== '' && c !== '.' && c !== '..');
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
