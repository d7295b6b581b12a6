/**
 * `shoal stop NAME...` and `shoal rm [-f] NAME...`.
 */
import type { Command } from 'commander';
import { act } from '../act';
import { StateStore } from '../../state/store';
import { ShoalError } from '../../util/errors';
import { removeVm } from '../../core';
import { isRunning, stopVm } from '../../lifecycle/stop';
import { parseStopTimeout } from '../../container/container-options';

export async function stopCommand(names: string[], flags: { time?: string } = {}): Promise<number> {
  const timeout = flags.time === undefined ? undefined : parseStopTimeout(flags.time, '--time');
  const store = new StateStore();
  const records = names.map((name) => store.get(name));
  for (const record of records) {
    await stopVm(store, record, timeout);
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
    await removeVm(store, record);
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
    .option('-t, --time <seconds>', 'seconds from SIGTERM to SIGKILL (default: the VM\'s --stop-timeout, else 5)')
    .action(act((names: string[], flags: { time?: string }) => stopCommand(names, flags)));

  program
    .command('rm')
    .description('remove VMs')
    .argument('<names...>')
    .option('-f, --force', 'kill and remove running VMs')
    .action(act((names: string[], flags: { force?: boolean }) => rmCommand(names, flags)));
}
