/**
 * A host Mux and a guest Mux joined by an in-memory link (two PassThroughs), already in step:
 * for unit tests that play one side of the agent protocol against the other.
 */
import { Duplex, PassThrough } from 'node:stream';
import { Mux } from '../../src/protocol/mux';

export function linkedMuxes(): { host: Mux; guest: Mux; destroy: () => void } {
  const aToB = new PassThrough();
  const bToA = new PassThrough();
  const host = new Mux(Duplex.from({ readable: bToA, writable: aToB }), { side: 'host', startInSync: false });
  const guest = new Mux(Duplex.from({ readable: aToB, writable: bToA }), { side: 'guest', startInSync: false });
  return { host, guest, destroy: () => { host.destroy(); guest.destroy(); } };
}
