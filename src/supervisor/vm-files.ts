/** The files of one VM inside its state directory. */
import fs from 'node:fs';
import path from 'node:path';

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
