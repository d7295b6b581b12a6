/**
 * `shoal fork NAME -n N [--name-prefix P] [-p [ADDR:]HOST:GUEST]... [--json]`: one fresh snapshot
 * of the running VM NAME, N clones restored from it concurrently (NAME-1..NAME-N), each with its
 * own disk copy, agent socket, session, crng reseed and network attachment; clone i publishes each
 * -p on host port HOST+i-1. Every host port is checked free before the snapshot.
 *
 * The snapshot is private to the fork (a .fork-* directory, never listed) and is removed as soon
 * as the children run: each child has its own disk copy and has loaded the device state, and
 * its QEMU maps memory.raw MAP_PRIVATE, which keeps the (unlinked) file's pages alive and shared
 * until the last child exits. So nothing needs reference counting, and nothing leaks.
 */
import type { Command } from 'commander';
import { act } from '../act';
import { collect } from '../options';
import { forkVm, type OnProgress } from '../../core';
import { assertPortsFree, formatForward, forwardsForChild, parsePublish } from '../../network/publish';
import { nameProblem } from '../../state/vm-record';
import { StateStore } from '../../state/store';
import type { VmRecord } from '../../state/vm-record';
import { ShoalError } from '../../util/errors';
import { progressLine } from '../output';

export interface ForkFlags {
  n: string;
  publish?: string[];
  namePrefix?: string;
  json?: boolean;
}

export async function forkCommand(name: string, flags: ForkFlags): Promise<number> {
  const store = new StateStore();
  if (!/^\d+$/.test(flags.n) || Number(flags.n) < 1 || Number(flags.n) > 64) throw new ShoalError(`invalid -n "${flags.n}": expected 1 to 64`);
  const count = Number(flags.n);
  const source = store.get(name);
  const prefix = flags.namePrefix ?? source.config.name;
  const names = Array.from({ length: count }, (_, i) => `${prefix}-${i + 1}`);
  // Checked before the snapshot: a prefix that is no valid name must change nothing.
  for (const child of names) {
    const problem = nameProblem(child);
    if (problem) throw new ShoalError(`invalid --name-prefix: ${problem}`);
  }
  for (const child of names) if (store.find(child)) throw new ShoalError(`the name "${child}" is already in use`);
  const publish = parsePublish(flags.publish ?? []);
  if (publish.length > 0 && (source.config.network ?? 'none') === 'none') throw new ShoalError(`--publish needs a network, and ${source.config.name} has none`);
  const childForwards = names.map((_, i) => forwardsForChild(publish, i + 1, count));
  await assertPortsFree(childForwards.flat());

  const started = Date.now();
  const onProgress: OnProgress = (event) => progressLine(event.message);
  const result = await forkVm(store, source, names.map((child, i) => ({ name: child, publish: childForwards[i]! })), { allOrNothing: true, onProgress });
  const children = result.children.filter((c): c is VmRecord => !(c instanceof Error));
  const { snapshotMs } = result;
  const totalMs = Date.now() - started;
  const out = children.map((c) => {
    const record = store.read(c.id) ?? c;
    const ports = (record.config.publish ?? []).map(formatForward);
    return { name: record.config.name, id: record.id, state: record.state, pid: record.supervisorPid ?? null, vmmPid: record.vmmPid ?? null, ports };
  });
  if (flags.json) process.stdout.write(`${JSON.stringify({ source: source.config.name, snapshotMs, pausedMs: result.pausedMs, totalMs, children: out }, null, 2)}\n`);
  else for (const child of out) process.stdout.write(`${child.name}\n`);
  progressLine(`forked ${count} in ${totalMs} ms (snapshot ${snapshotMs} ms)`);
  return 0;
}

/** The command's flags, declared beside its handler. */
export function registerFork(program: Command): void {
  program
    .command('fork')
    .description('snapshot a running VM and start N clones of it at once (NAME-1..NAME-N)')
    .argument('<name>', 'VM name or id')
    .option('-n, --count <n>', 'number of clones', '1')
    .option('--name-prefix <prefix>', 'name the clones PREFIX-1..PREFIX-N')
    .option('-p, --publish <[ADDR:]HOST:GUEST[/proto]>', 'publish a guest port of every clone: clone i gets host port HOST+i-1 (repeatable)', collect, [])
    .option('--json', 'print the clones as JSON')
    .action(act((name: string, flags: { count: string; namePrefix?: string; publish: string[]; json?: boolean }) => {
      const forkFlags: Parameters<typeof forkCommand>[1] = { n: flags.count, publish: flags.publish };
      if (flags.namePrefix !== undefined) forkFlags.namePrefix = flags.namePrefix;
      if (flags.json !== undefined) forkFlags.json = flags.json;
      return forkCommand(name, forkFlags);
    }));
}
