/**
 * `shoal ls [--json]`: every VM, with what it is now (a VM whose supervisor died is dead).
 */
import type { Command } from 'commander';
import { act } from '../act';
import { attachmentFor, guestAddress } from '../../network/mode';
import { formatForward } from '../../network/publish';
import { StateStore, statusOf } from '../../state/store';
import type { VmRecord } from '../../state/vm-record';
import { formatDuration, table } from '../output';

export interface VmListing {
  name: string;
  id: string;
  state: string;
  backend: string;
  accel: string;
  pid: number | null;
  vmmPid: number | null;
  image: string;
  cpus: number;
  memoryMiB: number;
  createdAt: string;
  startedAt: string | null;
  uptimeSeconds: number | null;
  exitCode: number | null;
  error: string | null;
  network: { mode: string; guestAddress: string | null; ports: string[] };
  /** "hit": restored from the image cache; "miss": booted (and saved it); null: not used. */
  imageCache: 'hit' | 'miss' | null;
  /** --health-check runs: 'restored' (started from a startup snapshot), 'saved' (took one), else null. */
  startupSnapshot: 'restored' | 'saved' | null;
}

export function listing(record: VmRecord): VmListing {
  const state = statusOf(record);
  const live = state === 'running' || state === 'starting' || state === 'stopping';
  return {
    name: record.config.name,
    id: record.id,
    state,
    backend: record.backend,
    accel: record.accel,
    pid: live ? record.supervisorPid ?? null : null,
    vmmPid: live ? record.vmmPid ?? null : null,
    image: record.config.image,
    cpus: record.config.cpus,
    memoryMiB: record.config.memoryMiB,
    createdAt: record.createdAt,
    startedAt: record.startedAt ?? null,
    uptimeSeconds: live && record.startedAt ? Math.floor((Date.now() - Date.parse(record.startedAt)) / 1000) : null,
    exitCode: record.exitCode ?? null,
    error: record.error ?? null,
    imageCache: record.imageCache ? (record.imageCache.hit ? 'hit' : 'miss') : null,
    startupSnapshot: record.imageCache?.startup ? 'restored' : record.startupSnapshot ? 'saved' : null,
    network: {
      mode: record.config.network ?? 'none',
      guestAddress: guestAddress(attachmentFor(record.config.network ?? 'none', record.backend), record.bridgedAddress, record.netnsInterface?.address),
      ...(record.config.netnsPath ? { netns: record.config.netnsPath } : {}),
      ports: (record.config.publish ?? []).map(formatForward),
    },
  };
}

export function lsCommand(flags: { json?: boolean }): number {
  const vms = new StateStore().list().map(listing);
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(vms, null, 2)}\n`);
    return 0;
  }
  const rows = vms.map((vm) => [
    vm.name,
    vm.id,
    vm.state === 'stopped' && vm.exitCode !== null ? `stopped (${vm.exitCode})` : vm.state,
    vm.backend,
    vm.accel,
    vm.pid === null ? '-' : String(vm.pid),
    vm.uptimeSeconds === null ? '-' : formatDuration(vm.uptimeSeconds),
    vm.network.ports.join(',') || '-',
    vm.image,
  ]);
  process.stdout.write(table(['NAME', 'ID', 'STATE', 'BACKEND', 'ACCEL', 'PID', 'UPTIME', 'PORTS', 'IMAGE'], rows));
  return 0;
}

/** The command's flags, declared beside its handler. */
export function registerLs(program: Command): void {
  program
    .command('ls')
    .alias('ps')
    .description('list VMs')
    .option('--json', 'machine-readable output')
    .action(act((flags: { json?: boolean }) => lsCommand(flags)));
}
