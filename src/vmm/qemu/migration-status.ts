/**
 * Waiting for a QEMU migration (a snapshot's device state) to end, by polling `query-migrate`:
 * the one loop behind every snapshot, first-generation or of a restored VM.
 */
import { ShoalError } from '../../util/errors';
import { sleep } from '../../util/process';
import type { QmpClient } from './qmp';

export interface MigrationWait {
  /** Names the work in errors: "<what> failed: <QEMU's reason>". */
  what: string;
  intervalMs: number;
  /** Give up after this long (none: wait as long as QEMU reports progress). */
  timeoutMs?: number;
  /** Runs after each poll that found the migration still going, with the time since the first. */
  onPoll?: (elapsedMs: number) => Promise<void>;
}

/** Resolves once the migration completed; throws on failed, cancelled, or the timeout. */
export async function waitForMigration(qmp: QmpClient, wait: MigrationWait): Promise<void> {
  const started = Date.now();
  for (;;) {
    const info = (await qmp.execute('query-migrate')) as { status?: string; 'error-desc'?: string };
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') throw new ShoalError(`${wait.what} failed: ${info['error-desc'] ?? info.status}`);
    const elapsed = Date.now() - started;
    if (wait.timeoutMs !== undefined && elapsed > wait.timeoutMs) throw new ShoalError(`${wait.what} did not finish within ${wait.timeoutMs / 1000} s`);
    await wait.onPoll?.(elapsed);
    await sleep(wait.intervalMs);
  }
}
