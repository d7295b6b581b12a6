/**
 * Entry point of a VM's supervisor process: `node dist/src/supervisor/main.js <id>`.
 * Started detached by `shoal run`; its stdout/stderr go to the VM's supervisor.log.
 */
import { StateStore } from '../state/store';
import { validateVmId } from '../state/names';
import { Supervisor } from './supervisor';
import { releaseVmResources } from '../lifecycle/release';

const id = process.argv[2];
if (!id || !validateVmId(id)) {
  process.stderr.write('usage: supervisor <vm-id>\n');
  process.exit(2);
}
const store = new StateStore();

/**
 * The last line of defence: whatever threw (a bug, or a guest's input that got past the
 * protocol's checks), the VM is recorded as failed with the reason and its host resources are
 * released before the process goes. The VMM and the network helpers die with this process
 * (parent-death signals).
 */
let failing = false;
async function failHard(err: unknown): Promise<void> {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`supervisor: fatal: ${err instanceof Error ? err.stack ?? message : message}\n`);
  if (failing) process.exit(1);
  failing = true;
  try {
    const record = store.update(id!, (r) => {
      r.state = 'failed';
      r.error = `the supervisor failed: ${message}`;
      r.finishedAt = new Date().toISOString();
    });
    if (record.vmmPid !== undefined) {
      try {
        process.kill(record.vmmPid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await releaseVmResources(record, store.vmDir(id!));
    if (record.config.autoRemove) store.remove(record);
  } catch {
    // the record may be gone (rm -f raced us)
  }
  process.exit(1);
}
process.on('uncaughtException', (err) => void failHard(err));
process.on('unhandledRejection', (err) => void failHard(err));

new Supervisor(store, id).main().catch((err: Error) => {
  process.stderr.write(`supervisor: ${err.stack ?? err.message}\n`);
  try {
    store.update(id, (r) => {
      r.state = 'failed';
      r.error = err.message;
    });
  } catch {
    // the record may be gone (rm -f raced us)
  }
  process.exit(1);
});
