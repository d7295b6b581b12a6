/**
 * Proportional set size of a VMM process, in KiB: in all, and of its guest-RAM mapping (the
 * /dev/shm RAM file of a booted VM, or the memory.raw of the snapshot a clone maps privately).
 * Used by the snapshot tests and benchmark to show how much memory clones share.
 */
import fs from 'node:fs';

export function pssKiB(pid: number): { total: number; guestRam: number } {
  const total = Number(/^Pss:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0);
  let guestRam = 0;
  let inRam = false;
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) inRam = /memory\.raw|shoal-[0-9a-f]+\.ram/.test(header[1] ?? '');
    else if (inRam && line.startsWith('Pss:')) guestRam += Number(/(\d+)/.exec(line)?.[1] ?? 0);
  }
  return { total, guestRam };
}
