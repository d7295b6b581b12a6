/**
 * Joins two channels (the CLI's, on the control socket, and the agent's, in the guest) so that
 * data, EOFs, messages and the close travel across, with credit flowing end to end: a byte is
 * acknowledged to the sender only once the far side accepted it.
 */
import type { Channel } from '../protocol/mux';

export function relayChannels(a: Channel, b: Channel): void {
  const oneWay = (from: Channel, to: Channel): void => {
    from.setDataHandler((stream, data) => to.write(stream, data));
    from.on('eof', (stream: number) => to.end(stream));
    from.on('message', (message: Record<string, unknown>) => to.send(message));
    from.on('close', () => {
      to.close();
      from.close();
    });
  };
  oneWay(a, b);
  oneWay(b, a);
}
