/**
 * How many host descriptors the FUSE servers of one VM may hold open for the guest at once.
 *
 * Every OPEN, CREATE and OPENDIR keeps a host descriptor until the guest's RELEASE, and the
 * guest decides when (or whether) that comes. Without a cap, a guest that opens files and never
 * closes them runs the supervisor into its own RLIMIT_NOFILE, after which it cannot accept a
 * control connection, open a log or answer anything. All the --map servers of a VM share one
 * budget; past it the guest gets EMFILE, as if it had hit a limit of its own.
 */

/** Open file and directory handles the guest may hold on the host, per VM (all its maps together). */
export const MAX_OPEN_HANDLES_PER_VM = 1024;

export class HandleBudget {
  private used = 0;

  constructor(readonly limit: number = MAX_OPEN_HANDLES_PER_VM) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`handle budget must be a positive integer, not ${limit}`);
  }

  /** Takes one handle; false (and nothing taken) if the budget is spent. */
  take(): boolean {
    if (this.used >= this.limit) return false;
    this.used++;
    return true;
  }

  /** Gives back `count` handles taken earlier. */
  give(count = 1): void {
    this.used = Math.max(0, this.used - count);
  }

  get inUse(): number {
    return this.used;
  }
}
