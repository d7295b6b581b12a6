/**
 * `shoal stop NAME...` and `shoal rm [-f] NAME...`.
 */
import type { Command } from 'commander';
import { act } from '../act';
import { StateStore } from '../../state/store';
import { ShoalError } from '../../util/errors';
import { isRunning, killVm, stopVm } from '../../lifecycle/stop';

export async function stopCommand(names: string[]): Promise<number> {
  const store = new StateStore();
  const records = names.map((name) => store.get(name));
  for (const record of records) {
    await stopVm(store, record);
    process.stdout.write(`${record.config.name}\n`);
  }
  return 0;
}

export async function rmCommand(names: string[], flags: { force?: boolean }): Promise<number> {
  const store = new StateStore();
  const records = names.map((name) => store.get(name));
  for (const record of records) {
    if (isRunning(record) && !flags.force) {
      throw new ShoalError(`VM ${record.config.name} is running: stop it first, or use rm -f`);
    }
  }
  for (const record of records) {
    await killVm(store, record);
    store.remove(record);
    process.stdout.write(`${record.config.name}\n`);
  }
  return 0;
}

/** The command's flags, declared beside its handler. */
export function registerStopRm(program: Command): void {
  program
    .command('stop')
    .description('stop VMs (the container gets SIGTERM, then the VM powers off)')
    .argument('<names...>')
    .action(act((names: string[]) => stopCommand(names)));

  program
    .command('rm')
    .description('remove VMs')
    .argument('<names...>')
    .option('-f, --force', 'kill and remove running VMs')
    .action(act((names: string[], flags: { force?: boolean }) => rmCommand(names, flags)));
}
