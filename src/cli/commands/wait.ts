/**
 * `shoal wait NAME...`: waits until each VM's container has ended and prints its exit code,
 * one line per VM, as `podman wait` does.
 */
import type { Command } from 'commander';
import { act } from '../act';
import { SupervisorClient, onControlEvents } from '../../control/client';
import { exitCodeOf } from '../../protocol/messages';
import { StateStore, statusOf } from '../../state/store';
import type { VmRecord } from '../../state/vm-record';
import { ShoalError } from '../../util/errors';

export async function waitCommand(names: string[]): Promise<number> {
  const store = new StateStore();
  const records = names.map((name) => store.get(name));
  for (const record of records) process.stdout.write(`${await exitCodeWhenEnded(store, record)}\n`);
  return 0;
}

function isLive(record: VmRecord): boolean {
  const status = statusOf(record);
  return status === 'creating' || status === 'starting' || status === 'running' || status === 'stopping';
}

async function exitCodeWhenEnded(store: StateStore, record: VmRecord): Promise<number> {
  let code: number | undefined;
  if (isLive(record)) {
    // The supervisor tells every attached watcher the exit code (even with --rm, whose record goes).
    const client = await SupervisorClient.connect(store, record).catch(() => undefined);
    if (client) {
      code = await new Promise<number | undefined>((resolve) => {
        const channel = client.attach(false);
        channel.setDataHandler(() => undefined);
        let exit: number | undefined;
        onControlEvents(channel, (event) => {
          if (event.type === 'exit') exit = exitCodeOf(event);
        });
        channel.on('close', () => resolve(exit));
      });
      client.close();
    }
  }
  const final = store.read(record.id);
  code ??= final?.exitCode;
  if (code !== undefined) return code;
  if (final && isLive(final)) throw new ShoalError(`lost the supervisor of ${record.config.name} while waiting`);
  throw new ShoalError(`VM ${record.config.name} ended without an exit code${final?.error ? `: ${final.error}` : ''}`);
}

/** The command's flags, declared beside its handler. */
export function registerWait(program: Command): void {
  program
    .command('wait')
    .description('wait for VMs\' containers to end and print their exit codes')
    .argument('<names...>', 'VM names or ids')
    .action(act((names: string[]) => waitCommand(names)));
}
