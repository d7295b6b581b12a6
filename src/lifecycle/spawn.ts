/**
 * Starting a VM's supervisor: the one place that spawns `supervisor/main.js` (for a run, a
 * clone, a fork child), detached in its own session so the VM outlives the CLI process, with
 * its output in the VM's supervisor.log and the CLI's state directory passed on.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { StateStore } from '../state/store';
import { vmFiles } from '../state/vm-files';

export function startSupervisor(store: StateStore, id: string): void {
  const files = vmFiles(store.vmDir(id));
  // 0600: the supervisor's log may quote what the guest said.
  const log = fs.openSync(files.supervisorLog, 'a', 0o600);
  try {
    const child = spawn(process.execPath, [path.join(__dirname, '..', 'supervisor', 'main.js'), id], {
      detached: true,
      stdio: ['ignore', log, log],
      env: { ...process.env, SHOAL_STATE_DIR: store.root },
    });
    child.unref();
  } finally {
    fs.closeSync(log);
  }
}
