/**
 * The supervisor's VM record: the latest copy, and every change written through the store at
 * once (atomically), so `shoal ls` and the CLI see what this process knows. Handed to the
 * supervisor's parts instead of the supervisor itself.
 */
import type { StateStore } from '../state/store';
import type { RecordedState, VmRecord } from '../state/vm-record';

export class VmRecordHandle {
  private record: VmRecord;

  constructor(private readonly store: StateStore, id: string) {
    const record = store.read(id);
    if (!record) throw new Error(`no record for VM ${id}`);
    this.record = record;
  }

  get current(): VmRecord {
    return this.record;
  }

  update(change: (record: VmRecord) => void): VmRecord {
    this.record = this.store.update(this.record.id, change);
    return this.record;
  }

  setState(state: RecordedState, change?: (record: VmRecord) => void): void {
    this.update((r) => {
      r.state = state;
      change?.(r);
    });
  }
}
