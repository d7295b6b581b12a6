/**
 * File operations in a VM's main container: each one a `files` channel on the supervisor's
 * control socket, relayed to the agent, which resolves every path inside the container's root
 * (src/agent/files.ts); the host side (src/host/files-client.ts) checks and caps every reply.
 */
import type { Readable } from 'node:stream';
import { SupervisorClient } from '../control/client';
import type { FilesControlRequest } from '../control/messages';
import { entriesOf, entryOf, filesCall, readFromChannel, writeToChannel } from '../host/files-client';
import { watchOnChannel, type WatchHandle, type WatchHandlers } from '../host/watch-client';
import type { FileEntry } from '../protocol/files';
import type { Channel } from '../protocol/mux';
import type { StateStore } from '../state/store';
import type { VmRecord } from '../state/vm-record';

export interface FileOps {
  read(id: string, path: string, maxBytes: number): Promise<{ entry: FileEntry; body: Readable }>;
  write(id: string, path: string, body: AsyncIterable<Buffer | string>, maxBytes: number): Promise<FileEntry>;
  list(id: string, path: string): Promise<{ entries: FileEntry[]; truncated: boolean }>;
  stat(id: string, path: string): Promise<FileEntry>;
  mkdir(id: string, path: string): Promise<boolean>;
  rename(id: string, from: string, to: string): Promise<FileEntry>;
  remove(id: string, path: string): Promise<void>;
  /**
   * Watches a directory with inotify in the guest until the handle is closed, the VM goes or the
   * guest ends it (handlers.onEnd). An agent that cannot watch refuses with a FilesError that
   * isWatchUnsupported (src/host/watch-client.ts) recognises.
   */
  watch(id: string, path: string, recursive: boolean, handlers: WatchHandlers): Promise<WatchHandle>;
}

/** A files channel on the VM's supervisor; the connection ends with the channel. */
export async function filesChannel(store: StateStore, record: VmRecord, request: Omit<FilesControlRequest, 'kind'>): Promise<Channel> {
  const client = await SupervisorClient.connect(store, record, 10_000);
  const channel = client.files(request);
  channel.on('close', () => client.close());
  return channel;
}

/** FileOps by VM id or name; `running` finds the VM and refuses one that is not running. */
export class AgentFiles implements FileOps {
  constructor(private readonly store: StateStore, private readonly running: (id: string) => VmRecord) {}

  private open(id: string, request: Omit<FilesControlRequest, 'kind'>): Promise<Channel> {
    return filesChannel(this.store, this.running(id), request);
  }

  async read(id: string, p: string, maxBytes: number): Promise<{ entry: FileEntry; body: Readable }> {
    return readFromChannel(await this.open(id, { op: 'read', path: p }), maxBytes);
  }

  async write(id: string, p: string, body: AsyncIterable<Buffer | string>, maxBytes: number): Promise<FileEntry> {
    return writeToChannel(await this.open(id, { op: 'write', path: p }), body, maxBytes);
  }

  async list(id: string, p: string): Promise<{ entries: FileEntry[]; truncated: boolean }> {
    return entriesOf(await filesCall(await this.open(id, { op: 'list', path: p })));
  }

  async stat(id: string, p: string): Promise<FileEntry> {
    return entryOf(await filesCall(await this.open(id, { op: 'stat', path: p })));
  }

  async mkdir(id: string, p: string): Promise<boolean> {
    return (await filesCall(await this.open(id, { op: 'mkdir', path: p }))).created === true;
  }

  async rename(id: string, from: string, to: string): Promise<FileEntry> {
    return entryOf(await filesCall(await this.open(id, { op: 'rename', path: from, to })));
  }

  async remove(id: string, p: string): Promise<void> {
    await filesCall(await this.open(id, { op: 'remove', path: p }));
  }

  async watch(id: string, p: string, recursive: boolean, handlers: WatchHandlers): Promise<WatchHandle> {
    return watchOnChannel(await this.open(id, { op: 'watch', path: p, ...(recursive ? { recursive: true } : {}) }), handlers);
  }
}
