/**
 * Entry point of a VM's supervisor process: `node dist/src/supervisor/main.js <id>`.
 * Started detached by `shoal run`; its stdout/stderr go to the VM's supervisor.log.
 */
import { StateStore } from '../state/store';
import { Supervisor } from './supervisor';

const id = process.argv[2];
if (!id) {
  process.stderr.write('usage: supervisor <vm-id>\n');
  process.exit(2);
}
const store = new StateStore();
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
