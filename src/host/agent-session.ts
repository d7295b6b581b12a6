/**
 * The host end of a session with the guest agent: connect through the VMM, send the sync
 * marker and HELLO (repeated until answered: the guest may still be booting, or reading
 * stale bytes), and wait for the matching HELLO_ACK.
 */
import crypto from 'node:crypto';
import { FrameType } from '../protocol/frames';
import type { GuestNetworkIdentity, Hello, HelloAck } from '../protocol/messages';
import { Mux } from '../protocol/mux';
import { ShoalError } from '../util/errors';
import type { VmHandle } from '../vmm/backend';

const HELLO_RETRY_MS = 500;

/** What a clone's HELLO carries so its agent can take it on before answering. */
export interface CloneIdentity {
  network?: GuestNetworkIdentity;
  hostname?: string;
  /** This is the first session of a VM restored from a snapshot (see Hello.restored). */
  restored?: boolean;
}

export async function openAgentSession(vm: VmHandle, timeoutMs: number, clone: CloneIdentity = {}): Promise<Mux> {
  const deadline = Date.now() + timeoutMs;
  const stream = await vm.connectAgent(timeoutMs);
  // SHOAL_TRACE=1 logs every frame of the agent session on stderr (the supervisor's log).
  const trace = process.env.SHOAL_TRACE === '1'
    ? (dir: string, ch: number, type: FrameType, len: number) => process.stderr.write(`${new Date().toISOString()} agent ${dir} ch=${ch} type=${FrameType[type]} len=${len}\n`)
    : undefined;
  const mux = new Mux(stream, { side: 'host', startInSync: true, ...(trace ? { trace } : {}) });
  const session = crypto.randomBytes(8).toString('hex');
  const hello = (): Hello => ({
    session,
    timeMs: Date.now(),
    seed: crypto.randomBytes(64).toString('hex'),
    ...(clone.network ? { network: clone.network } : {}),
    ...(clone.hostname ? { hostname: clone.hostname } : {}),
    ...(clone.restored ? { restored: true } : {}),
  });
  return new Promise<Mux>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      mux.off('helloAck', onAck);
      mux.off('close', onClose);
      if (err) {
        mux.destroy();
        reject(err);
      } else resolve(mux);
    };
    const onAck = (ack: HelloAck): void => {
      if (ack.session === session) finish();
    };
    const onClose = (): void => finish(new ShoalError(mux.protocolError === undefined
      ? 'the agent connection closed before the guest answered'
      : `the guest broke the agent protocol before it answered (${mux.protocolError})`));
    const tick = (): void => {
      if (Date.now() > deadline) {
        finish(new ShoalError(`the guest agent did not answer within ${Math.round(timeoutMs / 1000)} s`));
        return;
      }
      mux.sendHello(FrameType.Hello, hello());
      timer = setTimeout(tick, HELLO_RETRY_MS);
    };
    mux.on('helloAck', onAck);
    mux.on('close', onClose);
    tick();
  });
}
