/**
 * `shoal logs [--console] NAME`: the container's output (stdout to stdout, stderr to stderr),
 * or with --console the guest's serial console. Both are read in pieces, never whole.
 */
import type { Command } from 'commander';
import { act } from '../act';
import { StateStore } from '../../state/store';
import { readContainerLog, streamLogFile } from '../../supervisor/container-log';
import { vmFiles } from '../../state/vm-files';
import { STDERR } from '../../protocol/mux';

export async function logsCommand(nameOrId: string, flags: { console?: boolean }): Promise<number> {
  const store = new StateStore();
  const record = store.get(nameOrId);
  const files = vmFiles(store.vmDir(record.id));
  if (flags.console) {
    await streamLogFile(files.consoleLog, process.stdout);
    return 0;
  }
  for (const { stream, data } of readContainerLog(files.containerLog)) {
    const out = stream === STDERR ? process.stderr : process.stdout;
    if (!out.write(Buffer.from(data))) await new Promise<void>((resolve) => out.once('drain', resolve));
  }
  return 0;
}

/** The command's flags, declared beside its handler. */
export function registerLogs(program: Command): void {
  program
    .command('logs')
    .description('print a VM\'s container output (or its guest console)')
    .argument('<name>')
    .option('--console', 'print the guest serial console instead')
    .action(act((name: string, flags: { console?: boolean }) => logsCommand(name, flags)));
}
