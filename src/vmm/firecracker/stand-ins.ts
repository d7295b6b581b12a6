/**
 * Stand-ins for a snapshot's recorded drive files during a load.
 *
 * `PUT /snapshot/load` reopens every drive at the path recorded in the snapshot (v1.16.1
 * src/vmm/src/devices/virtio/block/virtio/persist.rs, VirtioBlock::restore -> DiskProperties::new
 * on state.disk_path) before `PATCH /drives` can point it at the clone's own file. For shoal that
 * path is the source VM's scratch disk, which is deleted when the source ends. So while a clone
 * loads, a sparse file of the clone disk's size (the guest's restored capacity stays what it was)
 * stands at each recorded path that no longer exists, and goes once the load sequence is done.
 *
 * Two clones of one snapshot may load at once and want the same stand-in: a lock per recorded
 * path (a directory made with mkdir, holding the holder's pid) serializes them.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ShoalError } from '../../util/errors';

export interface RecordedDrive {
  /** The path the snapshot recorded (what the load opens). */
  recorded: string;
  /** The clone's own file, swapped in by PATCH /drives after the load. */
  replacement: string;
}

const LOCK_TIMEOUT_MS = 120_000;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** mkdir-based lock; a lock whose holder died is taken over. */
async function lock(dir: string): Promise<() => void> {
  const deadline = Date.now() + LOCK_TIMEOUT_MS;
  for (;;) {
    try {
      fs.mkdirSync(dir, { mode: 0o700 });
      fs.writeFileSync(path.join(dir, 'pid'), String(process.pid), { mode: 0o600 });
      return () => fs.rmSync(dir, { recursive: true, force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let holder = NaN;
    try {
      holder = Number(fs.readFileSync(path.join(dir, 'pid'), 'utf8'));
    } catch {
      /* being written or removed: look again */
    }
    if (Number.isInteger(holder) && holder > 0 && !alive(holder)) {
      fs.rmSync(dir, { recursive: true, force: true });
      continue;
    }
    if (Date.now() > deadline) throw new ShoalError(`another restore holds ${dir} for more than ${LOCK_TIMEOUT_MS / 1000} s`);
    await sleep(50);
  }
}

/** A drive the clone keeps (the shared rootfs) must still be there: one line before anything starts. */
export function checkKeptDrives(drives: RecordedDrive[]): void {
  for (const d of drives) {
    if (d.recorded === d.replacement && !fs.existsSync(d.recorded)) {
      throw new ShoalError(`the snapshot's drive ${d.recorded} is gone (was \`shoal setup --force\` run since?)`);
    }
  }
}

/**
 * Places the stand-ins the load needs; returns the function that removes them (and the
 * directories made for them) and releases the locks. lockDir: a directory of this user's.
 */
export async function placeStandIns(drives: RecordedDrive[], lockDir: string): Promise<() => void> {
  const undo: Array<() => void> = [];
  const release = (): void => {
    for (const f of undo.reverse()) {
      try {
        f();
      } catch {
        /* best effort: a directory another clone still uses stays */
      }
    }
  };
  try {
    for (const d of drives) {
      if (d.recorded === d.replacement) continue;
      const hash = crypto.createHash('sha256').update(d.recorded).digest('hex').slice(0, 16);
      undo.push(await lock(path.join(lockDir, `.fc-load-${hash}.lock`)));
      if (fs.existsSync(d.recorded)) continue; // the source still runs: its file is opened, never written while paused
      const size = fs.statSync(d.replacement).size;
      // Directories on the way (the source's VM directory, when it was removed), outermost first.
      const made: string[] = [];
      for (let dir = path.dirname(d.recorded); !fs.existsSync(dir); dir = path.dirname(dir)) made.unshift(dir);
      for (const dir of made) {
        fs.mkdirSync(dir, { mode: 0o700 });
        undo.push(() => fs.rmdirSync(dir));
      }
      const fd = fs.openSync(d.recorded, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY, 0o600);
      undo.push(() => fs.rmSync(d.recorded, { force: true }));
      try {
        fs.ftruncateSync(fd, size);
      } finally {
        fs.closeSync(fd);
      }
    }
  } catch (err) {
    release();
    throw err;
  }
  return release;
}
