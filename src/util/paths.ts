/**
 * Where shoal keeps things. Two roots, so tests can use a private state
 * directory while sharing the (slow to build) guest assets:
 *   SHOAL_STATE_DIR  VM records, names, snapshots      (default /var/lib/shoal, or ~/.local/share/shoal)
 *   SHOAL_CACHE_DIR  guest kernel, initramfs, rootfs    (default /var/cache/shoal, or ~/.cache/shoal)
 */
import os from 'node:os';
import path from 'node:path';

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

export function stateDir(): string {
  if (process.env.SHOAL_STATE_DIR) return path.resolve(process.env.SHOAL_STATE_DIR);
  return isRoot ? '/var/lib/shoal' : path.join(os.homedir(), '.local', 'share', 'shoal');
}

export function cacheDir(): string {
  if (process.env.SHOAL_CACHE_DIR) return path.resolve(process.env.SHOAL_CACHE_DIR);
  return isRoot ? '/var/cache/shoal' : path.join(os.homedir(), '.cache', 'shoal');
}

/** Root of the compiled project (dist/..), used to find the agent code and native addon. */
export function projectRoot(): string {
  // This file compiles to dist/src/util/paths.js.
  return path.resolve(__dirname, '..', '..', '..');
}
