/**
 * The files of one VM inside its state directory, and its guest memory file on tmpfs. Plain
 * paths: releasing them is src/lifecycle/release.ts's job.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ShoalError } from '../util/errors';
import { createPrivateFile } from '../util/private-fs';

export function vmFiles(dir: string) {
  return {
    dir,
    consoleLog: path.join(dir, 'console.log'),
    containerLog: path.join(dir, 'container.log'),
    supervisorLog: path.join(dir, 'supervisor.log'),
    scratchDisk: path.join(dir, 'scratch.img'),
    controlSocket: path.join(dir, 'ctl.sock'),
  };
}

/** Removes the sockets a VM's processes left in its directory (control, monitor, agent). */
export function removeSockets(dir: string): void {
  let entries: string[] = [];
  try {
    entries = fs.readdirSync(dir);
  } catch {
    return;
  }
  for (const entry of entries) if (entry.endsWith('.sock') || /\.sock_\d+$/.test(entry)) fs.rmSync(path.join(dir, entry), { force: true });
}

/**
 * Guest RAM of a booted VM: a file on tmpfs (/dev/shm), so a snapshot can take it as is and
 * guest memory is never written back to a disk. Named by the VM id; removed on every exit path
 * (the supervisor's finish, `rm -f`, the CLI's cleanup after a dead supervisor).
 */
export const MEMORY_FILE_DIR = process.env.SHOAL_SHM_DIR ?? '/dev/shm';

export function memoryFilePath(id: string): string {
  return path.join(MEMORY_FILE_DIR, `shoal-${id}.ram`);
}

/**
 * Creates the guest RAM file before the VMM opens it: mode 0600 and O_EXCL|O_NOFOLLOW, so a file
 * (or symlink) another local user planted under the name in the world-writable /dev/shm is
 * refused rather than shared with the guest.
 */
export function createMemoryFile(id: string): void {
  let fd: number;
  try {
    fd = createPrivateFile(memoryFilePath(id), fs.constants.O_RDWR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new ShoalError(`${memoryFilePath(id)} exists already (planted by someone?); refusing to use it as guest memory`);
    }
    throw err;
  }
  fs.closeSync(fd);
}

/** Present in a VM's directory when its supervisor must restore a snapshot instead of booting. */
export function restoreInfoPath(dir: string): string {
  return path.join(dir, 'restore.json');
}

export interface RestoreInfo {
  /** The snapshot's directory (snapshot.json, state.bin, memory.raw, scratch.img). */
  snapshotDir: string;
  tag: string;
  /** Firecracker: the `snapshot serve` socket to restore memory from (Uffd backend). */
  uffdSocket?: string;
}

/** How old an unused memory file must be before it counts as orphaned (a starting VM maps its own within seconds). */
const ORPHAN_AGE_MS = 5 * 60_000;

/**
 * Removes guest memory files in MEMORY_FILE_DIR that no process maps or holds open and that
 * nobody wrote to for a while: what a VM left behind when neither its supervisor nor `rm` could
 * clean up. Run at each supervisor start, so such a leak lasts until the next VM at most.
 */
export function removeOrphanMemoryFiles(dir: string = MEMORY_FILE_DIR, now: number = Date.now()): string[] {
  let names: string[];
  try {
    names = fs.readdirSync(dir).filter((n) => /^shoal-[0-9a-f]+\.ram$/.test(n));
  } catch {
    return [];
  }
  const candidates = names
    .map((n) => path.join(dir, n))
    .filter((file) => {
      try {
        return now - fs.statSync(file).mtimeMs > ORPHAN_AGE_MS;
      } catch {
        return false;
      }
    });
  if (candidates.length === 0) return [];
  const inUse = filesInUse();
  const removed: string[] = [];
  for (const file of candidates) {
    if (inUse.has(file)) continue;
    fs.rmSync(file, { force: true });
    removed.push(file);
  }
  return removed;
}

/** Every file some process maps or has open (from /proc; unreadable processes are skipped). */
function filesInUse(): Set<string> {
  const used = new Set<string>();
  for (const pid of fs.readdirSync('/proc').filter((e) => /^\d+$/.test(e))) {
    try {
      for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
        const at = line.indexOf('/');
        if (at >= 0) used.add(line.slice(at).replace(/ \(deleted\)$/, ''));
      }
      for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
        try {
          used.add(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
        } catch {
          // closed meanwhile
        }
      }
    } catch {
      // gone, or not ours to read
    }
  }
  return used;
}
