/**
 * The guest half of `--map`: mounts a FUSE file system at the asked mountpoint and carries the
 * kernel's requests to the host on the channel (stream 1), and the host's replies back to the
 * kernel (stream 0). The agent never interprets a request: the host serves them.
 */
import fs from 'node:fs';
import { mountFuse, type FuseDevice } from '../fuse/device';
import { FuseMessageSplitter } from '../fuse/message-splitter';
import type { FuseMountRequest } from '../protocol/messages';
import { STDIN, STDOUT, type Channel } from '../protocol/mux';

export function runFuseMount(request: FuseMountRequest, channel: Channel, log: (message: string) => void): void {
  let device: FuseDevice | undefined;
  const splitter = new FuseMessageSplitter();
  channel.setDataHandler((stream, data) => {
    if (stream !== STDIN || !device) return;
    try {
      for (const reply of splitter.push(data)) device.reply(reply);
    } catch (err) {
      // A corrupt stream, or a reply the kernel refused: the mount cannot go on.
      log(`fuse mount on ${request.mountpoint}: ${(err as Error).message}`);
      channel.close();
    }
  });
  channel.on('close', () => {
    channel.close();
    void device?.unmount();
  });
  void (async () => {
    try {
      if (typeof request.mountpoint !== 'string' || !request.mountpoint.startsWith('/run/shoal/maps/')) {
        throw new Error(`refusing to mount on ${String(request.mountpoint)}`);
      }
      fs.mkdirSync(request.mountpoint, { recursive: true });
      device = await mountFuse(request.mountpoint, { readOnly: request.readOnly === true, name: 'shoal-map' });
      device.start((message) => {
        if (!channel.closed) void channel.write(STDOUT, message);
      });
      channel.send({ type: 'mounted' });
    } catch (err) {
      log(`fuse mount on ${request.mountpoint} failed: ${(err as Error).message}`);
      channel.send({ type: 'error', message: (err as Error).message });
      channel.close();
    }
  })();
}
