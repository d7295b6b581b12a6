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
    child.once('exit', (code, signal) => markDiedAtStart(store, id, signal ?? `code ${code}`));
    child.unref();
  } finally {
    fs.closeSync(log);
  }
}

/**
 * A supervisor that dies (kill -9, a crash while loading) before its first record write leaves
 * the record `creating` with no supervisor pid, which reads as "being created" for as long as
 * this CLI lives (it waits to connect): record it as failed instead, so `ls` tells the truth and
 * the waiting CLI gives up at once. Only such a record is touched: once the supervisor has
 * written its pid, readers judge it by that pid, and it is the record's only writer.
 */
export function markDiedAtStart(store: StateStore, id: string, how: string): void {
  try {
    const record = store.read(id);
    if (!record || record.state !== 'creating' || record.supervisorPid !== undefined) return;
    store.update(id, (r) => {
      r.state = 'failed';
      r.error = `the supervisor died before it started (${how})`;
      r.finishedAt = new Date().toISOString();
    });
  } catch {
    // removed meanwhile (rm -f)
  }
}
