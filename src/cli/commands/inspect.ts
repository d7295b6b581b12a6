/**
 * `shoal inspect NAME...`: a JSON array (as podman prints), one object per VM: shoal's view
 * (status, record, config with the container flags) and, while it runs, the container's own
 * `podman inspect` from the guest.
 */
import type { Command } from 'commander';
import { act } from '../act';
import { collectExec } from '../guest-output';
import { SupervisorClient } from '../../control/client';
import { MAIN_CONTAINER } from '../../container/podman-argv';
import { StateStore, statusOf } from '../../state/store';
import type { VmRecord } from '../../state/vm-record';
import { listing } from './ls';

export async function inspectCommand(names: string[]): Promise<number> {
  const store = new StateStore();
  const records = names.map((name) => store.get(name)); // an unknown name fails before any output
  const documents: unknown[] = [];
  for (const record of records) documents.push({ ...listing(record), record, container: await containerInspect(store, record) });
  process.stdout.write(`${JSON.stringify(documents, null, 2)}\n`);
  return 0;
}

/** podman's inspect of the main container, or null when the VM does not run (its disk is gone then). */
async function containerInspect(store: StateStore, record: VmRecord): Promise<unknown> {
  if (statusOf(record) !== 'running') return null;
  const client = await SupervisorClient.connect(store, record, 5000);
  try {
    const result = await collectExec(client, { argv: ['podman', 'inspect', MAIN_CONTAINER], env: {}, interactive: false, vm: true });
    if (result.code !== 0) return null;
    const parsed: unknown = JSON.parse(result.stdout);
    return Array.isArray(parsed) ? parsed[0] ?? null : null;
  } catch {
    return null;
  } finally {
    client.close();
  }
}

/** The command's flags, declared beside its handler. */
export function registerInspect(program: Command): void {
  program
    .command('inspect')
    .description('show VMs and their containers as JSON (the VM record and podman inspect of the container)')
    .argument('<names...>', 'VM names or ids')
    .action(act((names: string[]) => inspectCommand(names)));
}
