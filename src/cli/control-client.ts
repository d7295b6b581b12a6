/**
 * The CLI's side of a supervisor's control socket.
 */
import net from 'node:net';
import { Mux } from '../protocol/mux';
import type { StateStore } from '../state/store';
import { statusOf } from '../state/store';
import type { VmRecord } from '../state/vm-record';
import { vmFiles } from '../supervisor/vm-files';
import { ShoalError } from '../util/errors';
import { sleep } from '../util/process';

/** Connects to a VM's supervisor, waiting for its socket while the supervisor is starting. */
export async function connectSupervisor(store: StateStore, record: VmRecord, timeoutMs = 15_000): Promise<Mux> {
  const socketPath = vmFiles(store.vmDir(record.id)).controlSocket;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const socket = await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect(socketPath);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
      return new Mux(socket, { side: 'host', startInSync: false });
    } catch (err) {
      const current = store.read(record.id);
      const status = current ? statusOf(current) : 'dead';
      if (status === 'dead' || status === 'failed' || status === 'stopped') {
        throw new ShoalError(current?.error ? `VM ${record.config.name} failed: ${current.error}` : `VM ${record.config.name} is ${status}`);
      }
      if (Date.now() > deadline) throw new ShoalError(`cannot reach the supervisor of ${record.config.name}: ${(err as Error).message}`);
      await sleep(20);
    }
  }
}
