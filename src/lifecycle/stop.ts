/**
 * Stopping and removing VMs, for every command that ends one, including VMs whose supervisor
 * died (then the caller cleans up after it: a VMM that somehow survived, sockets, the scratch disk).
 */
import fs from 'node:fs';
import { SupervisorClient } from '../control/client';
import { StateStore, statusOf } from '../state/store';
import type { VmRecord } from '../state/vm-record';
import { isAlive, sleep } from '../util/process';
import { releaseVmResources } from './release';

const STOP_TIMEOUT_MS = 30_000;

function isLive(record: VmRecord): boolean {
  const status = statusOf(record);
  return status === 'running' || status === 'starting' || status === 'stopping' || (status === 'creating' && record.supervisorPid !== undefined);
}

async function waitForExit(pid: number, startTime: string | undefined, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (isAlive(pid, startTime)) {
    if (Date.now() > deadline) return false;
    await sleep(25);
  }
  return true;
}

/** Kills the VMM of a VM if it is still there, making sure the pid still belongs to this VM. */
async function killLeftoverVmm(store: StateStore, record: VmRecord): Promise<void> {
  const pid = record.vmmPid;
  if (pid === undefined) return;
  let cmdline = '';
  try {
    cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
  } catch {
    return;
  }
  // A jailed Firecracker runs chrooted, with in-jail paths; its `--id <id>` names it.
  const ours = cmdline.includes(store.vmDir(record.id)) || (record.config.jailer !== undefined && cmdline.includes(record.id));
  if (!ours) return; // pid reused by something else
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    return;
  }
  await waitForExit(pid, undefined, 5000);
}

/**
 * Graceful stop through the supervisor (the container gets timeoutSeconds between SIGTERM and
 * SIGKILL, default: its --stop-timeout, else 5); SIGKILL to the supervisor when it does not finish in time.
 */
export async function stopVm(store: StateStore, record: VmRecord, timeoutSeconds?: number): Promise<void> {
  if (isLive(record) && record.supervisorPid !== undefined) {
    try {
      const client = await SupervisorClient.connect(store, record, 5000);
      await Promise.race([client.stop(timeoutSeconds), sleep(5000)]);
      client.close();
    } catch {
      // unreachable supervisor: fall through to the kill
    }
    const grace = timeoutSeconds ?? record.config.container?.stopTimeout ?? 0;
    if (!(await waitForExit(record.supervisorPid, record.supervisorStartTime, Math.max(STOP_TIMEOUT_MS, (grace + 25) * 1000)))) {
      killSupervisor(record);
      await waitForExit(record.supervisorPid, record.supervisorStartTime, 5000);
    }
  }
  await cleanUpAfterSupervisor(store, record);
}

/** rm -f: no grace. */
export async function killVm(store: StateStore, record: VmRecord): Promise<void> {
  if (record.supervisorPid !== undefined && isAlive(record.supervisorPid, record.supervisorStartTime)) {
    killSupervisor(record);
    await waitForExit(record.supervisorPid, record.supervisorStartTime, 5000);
  }
  await cleanUpAfterSupervisor(store, record);
}

function killSupervisor(record: VmRecord): void {
  try {
    process.kill(record.supervisorPid!, 'SIGKILL');
  } catch {
    // already gone
  }
}

/** What a dead supervisor could not do: make sure the VMM is gone, drop sockets and scratch, fix the record. */
async function cleanUpAfterSupervisor(store: StateStore, record: VmRecord): Promise<void> {
  await killLeftoverVmm(store, record);
  // The record read at the start may predate what the supervisor added (a bridged address).
  await releaseVmResources(store.read(record.id) ?? record, store.vmDir(record.id));
  const current = store.read(record.id);
  if (current && statusOf(current) === 'dead') {
    store.update(record.id, (r) => {
      r.state = 'stopped';
      r.finishedAt = new Date().toISOString();
      r.error = r.error ?? 'the supervisor died';
    });
  }
}

export function isRunning(record: VmRecord): boolean {
  return isLive(record);
}
