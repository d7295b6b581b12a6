/**
 * `shoal logs [--console] NAME`: the container's output (stdout to stdout, stderr to stderr),
 * or with --console the guest's serial console.
 */
import fs from 'node:fs';
import { StateStore } from '../../state/store';
import { readContainerLog } from '../../supervisor/container-log';
import { vmFiles } from '../../state/vm-files';
import { STDERR } from '../../protocol/mux';

export function logsCommand(nameOrId: string, flags: { console?: boolean }): number {
  const store = new StateStore();
  const record = store.get(nameOrId);
  const files = vmFiles(store.vmDir(record.id));
  if (flags.console) {
    if (fs.existsSync(files.consoleLog)) process.stdout.write(fs.readFileSync(files.consoleLog));
    return 0;
  }
  for (const { stream, data } of readContainerLog(files.containerLog)) {
    (stream === STDERR ? process.stderr : process.stdout).write(data);
  }
  return 0;
}
