/** Ending a VM for good: kill (as `shoal rm -f`) and remove its record, directory and name. */
import { killVm } from '../lifecycle/stop';
import type { StateStore } from '../state/store';
import type { VmRecord } from '../state/vm-record';

export async function removeVm(store: StateStore, record: VmRecord): Promise<void> {
  await killVm(store, record);
  store.remove(record);
}

/** removeVm for a VM that failed to start, by id: best effort, it may be gone already. */
export async function discardVm(store: StateStore, id: string): Promise<void> {
  const record = store.read(id);
  if (!record) return;
  await killVm(store, record).catch(() => undefined);
  store.remove(record);
}
