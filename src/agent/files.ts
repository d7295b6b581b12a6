/**
 * The `files` channel (src/protocol/files.ts): file operations in the main container's file
 * system, seen from the guest as /proc/<container pid>/root (the container's root mount,
 * including its volumes). Paths are resolved here component by component as if the container's
 * root were `/`: symlinks are read and followed inside it (an absolute target starts again at
 * the container's root, `..` stops there), like openat2's RESOLVE_IN_ROOT, which Node lacks;
 * the last component is opened with O_NOFOLLOW. A container process that swaps a checked
 * directory for a symlink between the check and the open could still redirect one operation
 * into the guest OS, which is the VM's own and holds nothing of the host.
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { containerPathComponents, MAX_LIST_ENTRIES, type FileEntry, type FilesRequest } from '../protocol/files';
import { STDIN, STDOUT, type Channel } from '../protocol/mux';
import { serveWatch } from './watch';

const MAX_SYMLINKS = 40;
const READ_CHUNK = 64 * 1024;

class FilesError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

export function runFiles(request: FilesRequest, channel: Channel): void {
  if (request.op !== 'write') channel.setDataHandler(() => undefined);
  void serve(request, channel).catch((err: unknown) => {
    const e = err as NodeJS.ErrnoException;
    const code = err instanceof FilesError ? err.code : (e.code ?? 'EIO');
    channel.send({ type: 'error', code, message: err instanceof FilesError ? err.message : `${request.path}: ${e.message}` });
    channel.close();
  });
}

async function serve(request: FilesRequest, channel: Channel): Promise<void> {
  const parsed = containerPathComponents(request.path);
  if ('problem' in parsed) throw new FilesError('EOUTSIDE', parsed.problem);
  const root = await containerRoot();
  switch (request.op) {
    case 'stat': {
      const target = await resolveInRoot(root, parsed.components, { followLast: false, createParents: false });
      channel.send({ type: 'result', entry: await entryOf(target.hostPath, target.containerPath) });
      break;
    }
    case 'list': {
      const target = await resolveInRoot(root, parsed.components, { followLast: true, createParents: false });
      const dirents = await fs.promises.readdir(target.hostPath, { withFileTypes: true });
      const entries: FileEntry[] = [];
      for (const d of dirents.slice(0, MAX_LIST_ENTRIES)) {
        const containerPath = path.posix.join(target.containerPath, d.name);
        try {
          entries.push(await entryOf(path.join(target.hostPath, d.name), containerPath));
        } catch {
          // gone since the readdir
        }
      }
      channel.send({ type: 'result', entries, truncated: dirents.length > MAX_LIST_ENTRIES });
      break;
    }
    case 'mkdir': {
      const existed = await exists(root, parsed.components);
      const target = await resolveInRoot(root, parsed.components, { followLast: true, createParents: true });
      await fs.promises.mkdir(target.hostPath, { mode: 0o755 }).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
      const st = await fs.promises.lstat(target.hostPath);
      if (!st.isDirectory()) throw new FilesError('EEXIST', `${request.path} exists and is not a directory`);
      channel.send({ type: 'result', created: !existed });
      break;
    }
    case 'remove': {
      if (parsed.components.length === 0) throw new FilesError('EINVAL', 'the container\'s root cannot be removed');
      const target = await resolveInRoot(root, parsed.components, { followLast: false, createParents: false });
      // rm never follows symlinks inside the tree it removes.
      await fs.promises.lstat(target.hostPath);
      await fs.promises.rm(target.hostPath, { recursive: true, force: false });
      channel.send({ type: 'result' });
      break;
    }
    case 'rename': {
      const to = containerPathComponents(request.to);
      if ('problem' in to) throw new FilesError('EOUTSIDE', to.problem);
      if (parsed.components.length === 0 || to.components.length === 0) throw new FilesError('EINVAL', 'the container\'s root cannot be renamed');
      const from = await resolveInRoot(root, parsed.components, { followLast: false, createParents: false });
      const dest = await resolveInRoot(root, to.components, { followLast: false, createParents: false });
      await fs.promises.rename(from.hostPath, dest.hostPath);
      channel.send({ type: 'result', entry: await entryOf(dest.hostPath, dest.containerPath) });
      break;
    }
    case 'read':
      await readFile(root, parsed.components, channel);
      return;
    case 'write':
      await writeFile(root, parsed.components, channel);
      return;
    case 'watch':
      await watchDirectory(root, parsed.components, request.recursive === true, channel);
      return;
    default:
      throw new FilesError('EINVAL', `unknown files operation ${String((request as { op?: unknown }).op)}`);
  }
  channel.close();
}

async function readFile(root: string, components: string[], channel: Channel): Promise<void> {
  const target = await resolveInRoot(root, components, { followLast: true, createParents: false });
  const handle = await fs.promises.open(target.hostPath, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    const st = await handle.stat();
    if (st.isDirectory()) throw new FilesError('EISDIR', `${target.containerPath} is a directory`);
    if (!st.isFile()) throw new FilesError('EINVAL', `${target.containerPath} is not a regular file`);
    channel.send({ type: 'stat', entry: entryFromStats(st, target.containerPath) });
    const buffer = Buffer.allocUnsafe(READ_CHUNK);
    for (;;) {
      if (channel.closed) return;
      const { bytesRead } = await handle.read(buffer, 0, READ_CHUNK, null);
      if (bytesRead === 0) break;
      await channel.write(STDOUT, Buffer.from(buffer.subarray(0, bytesRead)));
    }
    channel.end(STDOUT);
    channel.send({ type: 'result' });
    channel.close();
  } finally {
    await handle.close();
  }
}

/** Writes into a temp file beside the target and renames it over the target at EOF: all or nothing. */
async function writeFile(root: string, components: string[], channel: Channel): Promise<void> {
  if (components.length === 0) throw new FilesError('EISDIR', '/ is a directory');
  const target = await resolveInRoot(root, components, { followLast: true, createParents: true });
  const old = await fs.promises.lstat(target.hostPath).catch(() => undefined);
  if (old?.isDirectory()) throw new FilesError('EISDIR', `${target.containerPath} is a directory`);
  const temp = path.join(path.dirname(target.hostPath), `.${path.basename(target.hostPath)}.shoal-${crypto.randomBytes(6).toString('hex')}`);
  const handle = await fs.promises.open(temp, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, old ? old.mode & 0o7777 : 0o644);
  let finished = false;
  const abort = async (): Promise<void> => {
    if (finished) return;
    finished = true;
    await handle.close().catch(() => undefined);
    await fs.promises.unlink(temp).catch(() => undefined);
  };
  channel.on('close', () => void abort());
  let failed: Error | undefined;
  channel.setDataHandler(async (stream, data) => {
    if (stream !== STDIN || finished || failed) return;
    try {
      await handle.write(data);
    } catch (err) {
      failed = err as Error;
    }
  });
  channel.on('eof', (stream: number) => {
    if (stream !== STDIN || finished) return;
    void (async () => {
      if (failed) throw failed;
      finished = true;
      await handle.close();
      await fs.promises.rename(temp, target.hostPath);
      channel.send({ type: 'result', entry: await entryOf(target.hostPath, target.containerPath) });
      channel.close();
    })().catch((err: NodeJS.ErrnoException) => {
      void fs.promises.unlink(temp).catch(() => undefined);
      channel.send({ type: 'error', code: err.code ?? 'EIO', message: `${target.containerPath}: ${err.message}` });
      channel.close();
    });
  });
}

/** A watch (src/agent/watch.ts) of the directory, resolved in the container's root, on the channel. */
async function watchDirectory(root: string, components: string[], recursive: boolean, channel: Channel): Promise<void> {
  const target = await resolveInRoot(root, components, { followLast: true, createParents: false });
  await serveWatch(target.hostPath, target.containerPath, recursive, channel);
}

async function exists(root: string, components: string[]): Promise<boolean> {
  try {
    const target = await resolveInRoot(root, components, { followLast: true, createParents: false });
    await fs.promises.lstat(target.hostPath);
    return true;
  } catch {
    return false;
  }
}

async function entryOf(hostPath: string, containerPath: string): Promise<FileEntry> {
  return entryFromStats(await fs.promises.lstat(hostPath), containerPath);
}

function entryFromStats(st: fs.Stats, containerPath: string): FileEntry {
  const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
  return { name: path.posix.basename(containerPath) || '/', path: containerPath, type, size: st.size, mode: st.mode & 0o7777, mtime: st.mtime.toISOString() };
}

/**
 * Resolves container path components under root as if root were `/` (see the file comment).
 * With createParents, missing directories on the way are made (mode 0755). The last component
 * may be missing (it is what a write or mkdir creates).
 */
export async function resolveInRoot(
  root: string,
  components: string[],
  options: { followLast: boolean; createParents: boolean },
): Promise<{ hostPath: string; containerPath: string }> {
  let current: string[] = [];
  let queue = [...components];
  let links = 0;
  while (queue.length > 0) {
    const component = queue.shift()!;
    if (component === '' || component === '.') continue;
    if (component === '..') {
      current.pop(); // only symlink targets bring `..`; it stops at the container's root
      continue;
    }
    const last = queue.length === 0;
    const hostPath = path.join(root, ...current, component);
    let st: fs.Stats;
    try {
      st = await fs.promises.lstat(hostPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (last) {
        current.push(component);
        break;
      }
      if (!options.createParents) throw new FilesError('ENOENT', `/${[...current, component].join('/')}: no such directory`);
      await fs.promises.mkdir(hostPath, { mode: 0o755 }).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
      queue.unshift(component); // look again: it may have been made as something else meanwhile
      continue;
    }
    if (st.isSymbolicLink() && (!last || options.followLast)) {
      if (++links > MAX_SYMLINKS) throw new FilesError('ELOOP', `/${components.join('/')}: too many symbolic links`);
      const target = await fs.promises.readlink(hostPath);
      if (target.startsWith('/')) current = [];
      queue = [...target.split('/'), ...queue];
      continue;
    }
    if (!last && !st.isDirectory()) throw new FilesError('ENOTDIR', `/${[...current, component].join('/')}: not a directory`);
    current.push(component);
  }
  return { hostPath: path.join(root, ...current), containerPath: `/${current.join('/')}` };
}

/** The main container's pid, asked of podman once and kept while that process lives. */
let cachedContainer: { pid: number; startTime: string } | undefined;

function startTimeOf(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

async function containerRoot(): Promise<string> {
  if (cachedContainer && startTimeOf(cachedContainer.pid) === cachedContainer.startTime) return `/proc/${cachedContainer.pid}/root`;
  const pid = await new Promise<number>((resolve, reject) => {
    execFile('podman', ['inspect', '--format', '{{.State.Pid}}', 'main'], { timeout: 30_000, maxBuffer: 64 * 1024 }, (err, stdout) => {
      const pid = Number(String(stdout).trim());
      if (err || !Number.isInteger(pid) || pid <= 0) reject(new FilesError('ENOCONTAINER', 'the container is not running'));
      else resolve(pid);
    });
  });
  const startTime = startTimeOf(pid);
  if (!startTime) throw new FilesError('ENOCONTAINER', 'the container is not running');
  cachedContainer = { pid, startTime };
  return `/proc/${pid}/root`;
}
