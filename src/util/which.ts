/**
 * The one PATH search (host tools for `shoal setup`, the Firecracker and jailer binaries).
 */
import fs from 'node:fs';
import path from 'node:path';

/** Is p an executable regular file (for this process)? */
export function isExecutable(p: string): boolean {
  try {
    fs.accessSync(p, fs.constants.X_OK);
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

/** Absolute path of the first executable `name` in envPath's directories, then extraDirs; or null. */
export function searchPath(name: string, envPath: string | undefined, extraDirs: readonly string[] = []): string | null {
  for (const dir of [...(envPath ?? '').split(':'), ...extraDirs]) {
    if (!dir) continue;
    const p = path.join(dir, name);
    if (isExecutable(p)) return p;
  }
  return null;
}
