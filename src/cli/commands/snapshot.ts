/**
 * `shoal snapshot create NAME --tag T`, `snapshot ls [--json]`, `snapshot rm [-f] T...`,
 * `snapshot run --snapshot T [--name N] [--rm] [--exec -- CMD...]`.
 */
import type { Command } from 'commander';
import { act } from '../act';
import { collect } from '../options';
import { startClone, waitUntilRunning } from '../../snapshot/clone';
import { createSnapshot } from '../../snapshot/create';
import { checkRemovable, findSnapshot, lineageOf, listSnapshots, removeSnapshot, tagProblem } from '../../snapshot/store';
import { findServer, registerSnapshotServe } from './snapshot-serve';
import { nameProblem } from '../../state/vm-record';
import { StateStore } from '../../state/store';
import { ShoalError } from '../../util/errors';
import { killVm } from '../../lifecycle/stop';
import type { VmmKind } from '../../vmm/backend';
import { vmmTraits } from '../../vmm/traits';
import { formatDuration, progressLine, table } from '../output';
import { execCommand } from './exec';
import { assertPortsFree, parsePublish } from '../../network/publish';

export async function snapshotCreateCommand(name: string, flags: { tag?: string; json?: boolean }): Promise<number> {
  const store = new StateStore();
  const tag = flags.tag;
  if (!tag) throw new ShoalError('snapshot create needs --tag');
  const problem = tagProblem(tag);
  if (problem) throw new ShoalError(`invalid --tag: ${problem}`);
  const record = store.get(name);
  progressLine(`snapshotting ${record.config.name} as ${tag}`);
  const { manifest } = await createSnapshot(store, record, tag, { progress: progressLine });
  if (flags.json) process.stdout.write(`${JSON.stringify(manifest, null, 2)}\n`);
  else process.stdout.write(`${tag}\n`);
  progressLine(`snapshot ${tag}: source paused ${manifest.timings.pausedMs} ms, ${mib(manifest.bytes.memory)} memory, ${mib(manifest.bytes.scratch)} disk, ${manifest.timings.totalMs} ms in all`);
  return 0;
}

export function snapshotLsCommand(flags: { json?: boolean }): number {
  const store = new StateStore();
  const entries = listSnapshots(store);
  if (flags.json) {
    const lineage = lineageOf(entries, store.list());
    const out = entries.map(({ tag, manifest }) => ({
      tag,
      id: manifest.id ?? null,
      // The snapshot the source VM was restored from (named, fork's, or the image cache's), and
      // what came from this one: snapshots of its clones, and its clones that run now.
      parent: lineage.get(tag)?.parent ?? null,
      children: lineage.get(tag)?.children ?? [],
      liveClones: lineage.get(tag)?.liveClones ?? [],
      source: manifest.source.name,
      sourceId: manifest.source.id,
      createdAt: manifest.createdAt,
      image: manifest.config.image,
      memoryMiB: manifest.config.memoryMiB,
      cpus: manifest.config.cpus,
      bytes: manifest.bytes,
      pausedMs: manifest.timings.pausedMs,
    }));
    process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    return 0;
  }
  const rows = entries.map(({ tag, manifest }) => [
    tag,
    manifest.source.name,
    manifest.parent?.tag ?? '-',
    formatDuration((Date.now() - Date.parse(manifest.createdAt)) / 1000),
    mib(manifest.bytes.memory),
    mib(manifest.bytes.scratch),
    manifest.config.image,
  ]);
  process.stdout.write(table(['TAG', 'SOURCE', 'PARENT', 'AGE', 'MEMORY', 'DISK', 'IMAGE'], rows));
  return 0;
}

export function snapshotRmCommand(tags: string[], flags: { force?: boolean } = {}): number {
  const store = new StateStore();
  const force = flags.force === true;
  // Every tag is checked (it exists; no live clone maps it, unless --force) before any is removed.
  for (const tag of tags) checkRemovable(store, tag, { force });
  for (const tag of tags) {
    removeSnapshot(store, tag, { force });
    process.stdout.write(`${tag}\n`);
  }
  return 0;
}

export interface SnapshotRunFlags {
  snapshot?: string;
  name?: string;
  rm?: boolean;
  exec?: boolean;
  publish?: string[];
  pid?: string;
}

export async function snapshotRunCommand(command: string[], flags: SnapshotRunFlags): Promise<number> {
  const store = new StateStore();
  if (!flags.snapshot) throw new ShoalError('snapshot run needs --snapshot TAG');
  const argv = command[0] === '--' ? command.slice(1) : command;
  if (flags.exec && argv.length === 0) throw new ShoalError('--exec needs a command (after --)');
  if (!flags.exec && argv.length > 0) throw new ShoalError('a command is only taken with --exec');
  const { dir, manifest } = findSnapshot(store, flags.snapshot);
  const uffdSocket = flags.pid === undefined ? undefined : serverSocket(store, flags.pid, flags.snapshot, manifest.backend);
  const publish = parsePublish(flags.publish ?? []);
  if (publish.length > 0 && (manifest.config.network ?? 'none') === 'none') throw new ShoalError(`--publish needs a network, and snapshot ${flags.snapshot} was taken of a VM without one`);
  await assertPortsFree(publish);
  const name = flags.name ?? `${manifest.source.name}-${Math.random().toString(16).slice(2, 8)}`;
  const nameIssue = nameProblem(name);
  if (nameIssue) throw new ShoalError(`invalid --name: ${nameIssue}`);
  // With --exec the clone is removed afterwards whatever happens.
  const record = startClone(store, dir, manifest, { name, autoRemove: flags.rm === true && !flags.exec, publish, ...(uffdSocket ? { uffdSocket } : {}) });
  try {
    await waitUntilRunning(store, record, progressLine);
  } catch (err) {
    if (flags.exec || flags.rm) await removeClone(store, name);
    throw err;
  }
  if (!flags.exec) {
    process.stdout.write(`${name}\n`);
    return 0;
  }
  try {
    return await execCommand(name, argv, { env: [] });
  } finally {
    await removeClone(store, name);
  }
}

/** `--pid`: the socket of the `snapshot serve` process serving this snapshot to Firecracker clones. */
function serverSocket(store: StateStore, pidText: string, tag: string, backend: VmmKind): string {
  if (!/^\d+$/.test(pidText)) throw new ShoalError(`invalid --pid "${pidText}": expected a process id`);
  const server = findServer(store, Number(pidText));
  if (server.tag !== tag) throw new ShoalError(`pid ${pidText} serves snapshot ${server.tag}, not ${tag}`);
  if (!vmmTraits(backend).uffdRestore) {
    throw new ShoalError(`--pid restores memory through Firecracker's Uffd backend; snapshot ${tag} is a ${backend} snapshot, whose clones map its memory file directly`);
  }
  return server.socket;
}

async function removeClone(store: StateStore, name: string): Promise<void> {
  const record = store.find(name);
  if (!record) return;
  await killVm(store, record);
  store.remove(record);
}

function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

/** The command's flags, declared beside its handler. */
export function registerSnapshot(program: Command): void {
  const snapshot = program.command('snapshot').description('snapshots of running VMs, and VMs restored from them');
  snapshot
    .command('create')
    .description('snapshot a running VM (memory, device state, scratch disk); the VM keeps running')
    .argument('<name>', 'VM name or id')
    .requiredOption('--tag <tag>', 'name of the snapshot')
    .option('--json', 'print the manifest as JSON')
    .action(act((name: string, flags: { tag?: string; json?: boolean }) => snapshotCreateCommand(name, flags)));
  snapshot
    .command('ls')
    .description('list snapshots')
    .option('--json', 'machine-readable output')
    .action(act((flags: { json?: boolean }) => snapshotLsCommand(flags)));
  snapshot
    .command('rm')
    .description('remove snapshots; refused while live clones of one run (they map its memory file), unless --force')
    .argument('<tags...>')
    .option('-f, --force', 'remove even with live clones (they keep running; the space is freed when the last ends)')
    .action(act((tags: string[], flags: { force?: boolean }) => snapshotRmCommand(tags, flags)));
  snapshot
    .command('run')
    .description('start a new VM from a snapshot; its container is already running')
    .requiredOption('--snapshot <tag>', 'the snapshot to restore')
    .option('--name <name>', 'name of the new VM')
    .option('--rm', 'remove the VM when its container exits')
    .option('--exec', 'run the command after -- in the clone\'s container, print its output, exit with its code, remove the clone')
    .option('-p, --publish <[ADDR:]HOST:GUEST[/tcp|/udp]>', 'publish a guest port of the clone on the host (repeatable)', collect, [])
    .option('--pid <pid>', 'Firecracker: take the clone\'s memory from this `snapshot serve` process (Uffd backend)')
    .argument('[command...]', 'with --exec: command and arguments (after --)')
    .passThroughOptions()
    .action(act((command: string[], flags: Parameters<typeof snapshotRunCommand>[1]) => snapshotRunCommand(command, flags)));
  registerSnapshotServe(snapshot);
}
