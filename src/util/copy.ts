/**
 * Copies a disk or memory image the cheapest way the filesystem allows: a reflink where it can
 * (btrfs, XFS), else a sparse copy (holes for zero blocks, so an untouched guest disk or RAM
 * costs no space). `cp` does both, and is there on every host.
 *
 * A failure is one line naming the file and cp's reason ("No space left on device"): it ends up
 * in a `shoal: ...` message, and cp's own output (the command, then its complaint) is two.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { ShoalError } from './errors';
import { tiedArgv } from './process';

export function copySparse(from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => {
    // Tied to this process (parent-death signal): a copy of a guest's RAM must not run on into a
    // directory that a killed supervisor's clean-up is sweeping.
    const [command, ...args] = tiedArgv('cp', ['--reflink=auto', '--sparse=always', from, to]);
    execFile(command!, args, (err, _stdout, stderr) => {
      if (!err) {
        resolve();
        return;
      }
      // cp says "cp: error writing 'FILE': REASON"; the reason is what the user needs.
      const said = String(stderr).trim().split('\n').pop() ?? '';
      const reason = /: ([^:]+)$/.exec(said)?.[1] ?? (said || err.message);
      reject(new ShoalError(`cannot copy to ${path.basename(to)}: ${reason}`));
    });
  });
}
