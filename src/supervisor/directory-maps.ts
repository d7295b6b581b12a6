/**
 * The host half of `--map`: for each mapped directory, asks the guest agent to mount a FUSE file
 * system and serves its requests here, on the host directory, through src/fuse/server.ts. The
 * guest only ever sees FUSE replies; every path is resolved and confined on this side.
 */
import { guestMountpoint, type DirectoryMap } from '../container/map-spec';
import { HandleBudget } from '../fuse/handle-budget';
import { FuseServer } from '../fuse/server';
import { FuseMessageSplitter } from '../fuse/message-splitter';
import { STDIN, STDOUT, type Channel, type Mux } from '../protocol/mux';
import { ShoalError } from '../util/errors';

export interface ServedMap {
  map: DirectoryMap;
  /** The FUSE mount in the guest OS, bind-mounted into the container. */
  mountpoint: string;
  channel: Channel;
}

const MOUNT_TIMEOUT_MS = 30_000;

export async function serveDirectoryMaps(agent: Mux, maps: DirectoryMap[]): Promise<ServedMap[]> {
  const served: ServedMap[] = [];
  // One budget of open host descriptors for all of this VM's maps (src/fuse/handle-budget.ts).
  const handles = new HandleBudget();
  try {
    for (const [index, map] of maps.entries()) {
      const mountpoint = guestMountpoint(index);
      const channel = await mountOne(agent, map, mountpoint, handles);
      served.push({ map, mountpoint, channel });
    }
  } catch (err) {
    for (const s of served) s.channel.close();
    throw err;
  }
  return served;
}

function mountOne(agent: Mux, map: DirectoryMap, mountpoint: string, handles: HandleBudget): Promise<Channel> {
  const server = new FuseServer(map.host, { readOnly: map.readOnly, handles });
  const channel = agent.open({ kind: 'fuse-mount', mountpoint, readOnly: map.readOnly });
  const splitter = new FuseMessageSplitter();
  // Requests are answered one at a time, in order, each with a single write back: the server is
  // synchronous, and the channel's credit paces the guest.
  channel.setDataHandler(async (stream, data) => {
    if (stream !== STDOUT) return;
    let requests: Buffer[];
    try {
      requests = splitter.push(data);
    } catch {
      // A corrupt stream cannot be resynchronised: end the mount (the guest's side is aborted).
      channel.close();
      return;
    }
    for (const request of requests) {
      const reply = server.handle(request);
      if (reply) await channel.write(STDIN, reply);
    }
  });
  channel.on('close', () => {
    server.close();
    channel.close();
  });
  return new Promise<Channel>((resolve, reject) => {
    const timer = setTimeout(() => {
      channel.close();
      reject(new ShoalError(`mounting ${map.host} in the VM timed out`));
    }, MOUNT_TIMEOUT_MS);
    channel.on('message', (message: Record<string, unknown>) => {
      if (message.type === 'mounted') {
        clearTimeout(timer);
        resolve(channel);
      } else if (message.type === 'error') {
        clearTimeout(timer);
        channel.close();
        reject(new ShoalError(`mounting ${map.host} in the VM failed: ${String(message.message)}`));
      }
    });
  });
}
