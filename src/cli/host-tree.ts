/**
 * The host side of `shoal cp` out of a VM: the guest's tar is unpacked (src/cli/guest-tar.ts)
 * into a private 0700 staging directory beside the destination, and only then are the entries
 * moved into place, merging directories as podman cp does. A staging directory is named after
 * its creator (pid and start time), so a later cp can tell one left by a killed cp from one in use.
 */
import fs from 'node:fs';
import path from 'node:path';
import { isAlive, processStartTime } from '../util/process';

const STAGING = /^\.shoal-cp-(\d+)-(\d+)-[A-Za-z0-9]{6}$/;

/** mkdtemp prefix of this process's staging directories in `parent`. */
export function stagingPrefix(parent: string): string {
  return path.join(parent, `.shoal-cp-${process.pid}-${processStartTime(process.pid) ?? 0}-`);
}

/**
 * Removes the staging directories in `parent` whose creating process is gone (a cp killed
 * before its cleanup). Only real directories owned by this user are touched: `parent` may be
 * shared (/tmp), and someone else's look-alike is left alone.
 */
export function sweepStaleStaging(parent: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return;
  }
  for (const name of names) {
    const m = STAGING.exec(name);
    if (!m || isAlive(Number(m[1]), m[2])) continue;
    const p = path.join(parent, name);
    try {
      const st = fs.lstatSync(p);
      if (!st.isDirectory() || st.uid !== process.getuid?.()) continue;
      fs.rmSync(p, { recursive: true, force: true });
    } catch {
      // gone already, or not ours to remove: the next cp tries again
    }
  }
}

/** Moves `from` to `to`: a directory onto a directory merges, anything else replaces. */
export function moveInto(from: string, to: string): void {
  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(to);
  } catch {
    existing = undefined;
  }
  const source = fs.lstatSync(from);
  if (!existing) {
    fs.renameSync(from, to);
    return;
  }
  if (existing.isDirectory() && source.isDirectory()) {
    for (const name of fs.readdirSync(from)) moveInto(path.join(from, name), path.join(to, name));
    fs.chmodSync(to, source.mode & 0o7777);
    fs.utimesSync(to, source.atime, source.mtime);
    fs.rmdirSync(from);
    return;
  }
  fs.rmSync(to, { recursive: true, force: true });
  fs.renameSync(from, to);
}
