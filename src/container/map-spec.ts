/**
 * `--map HOST:GUEST[:ro|:rw][,...]`: host directories shown to the container over FUSE. Checked
 * on the host before anything starts, so a typo is a one-line error and not a failed VM.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ShoalError } from '../util/errors';

export interface DirectoryMap {
  /** Absolute, symlink-free host directory. */
  host: string;
  /** Absolute path in the container. */
  guest: string;
  readOnly: boolean;
}

/** Container paths a map may not cover: the container's own plumbing. */
const RESERVED = ['/', '/proc', '/sys', '/dev'];

export function parseMaps(values: string[]): DirectoryMap[] {
  const maps: DirectoryMap[] = [];
  for (const value of values.flatMap((v) => v.split(','))) {
    const spec = value.trim();
    if (!spec) continue;
    const parts = spec.split(':');
    let mode = 'rw';
    if (parts.length === 3) mode = parts.pop()!;
    if (parts.length !== 2 || (mode !== 'ro' && mode !== 'rw')) throw new ShoalError(`invalid --map "${spec}": expected HOST:GUEST[:ro]`);
    const [hostPart, guest] = parts as [string, string];
    if (!hostPart) throw new ShoalError(`invalid --map "${spec}": the host directory is empty`);
    if (!guest.startsWith('/')) throw new ShoalError(`invalid --map "${spec}": the guest path must be absolute`);
    const guestPath = path.posix.normalize(guest).replace(/(.)\/$/, '$1');
    if (RESERVED.includes(guestPath)) throw new ShoalError(`invalid --map "${spec}": cannot map over ${guestPath}`);
    let host: string;
    try {
      host = fs.realpathSync(path.resolve(hostPart));
    } catch {
      throw new ShoalError(`invalid --map "${spec}": host directory ${hostPart} does not exist`);
    }
    if (!fs.statSync(host).isDirectory()) throw new ShoalError(`invalid --map "${spec}": ${hostPart} is not a directory`);
    if (maps.some((m) => m.guest === guestPath)) throw new ShoalError(`--map names the guest path ${guestPath} twice`);
    maps.push({ host, guest: guestPath, readOnly: mode === 'ro' });
  }
  return maps;
}

/** Where the agent mounts map number `index` in the guest OS; podman bind-mounts it into the container. */
export function guestMountpoint(index: number): string {
  return `/run/shoal/maps/${index}`;
}
