/**
 * The one typed client of a supervisor's control socket, used by every command (run, exec,
 * stop, snapshot, fork, clones). Requests are ControlRequests; every message that comes back is
 * parsed into a ControlEvent where it enters, and a malformed one ends the request with an error.
 */
import type net from 'node:net';
import { Mux, type Channel } from '../protocol/mux';
import type { StateStore } from '../state/store';
import { statusOf } from '../state/store';
import type { VmRecord } from '../state/vm-record';
import { vmFiles } from '../state/vm-files';
import { connectUnix, retryUntil } from '../util/connect';
import { ShoalError } from '../util/errors';
import { parseKeptList, type KeptProcessInfo } from '../protocol/kept';
import { parseControlEvent, type ClientMessage, type ControlEvent, type ControlRequest, type ExecControlRequest, type FilesControlRequest, type SnapshotResult } from './messages';

/** How a wait for `running` ended. */
export type RunningOutcome = { outcome: 'running' } | { outcome: 'exited' } | { outcome: 'error'; message: string } | { outcome: 'lost' };

/**
 * Delivers a channel's messages as ControlEvents. A message that is not one becomes an `error`
 * event and closes the channel: a supervisor that speaks nonsense is not followed further.
 */
export function onControlEvents(channel: Channel, handler: (event: ControlEvent) => void): void {
  channel.on('message', (message: Record<string, unknown>) => {
    const event = parseControlEvent(message);
    if (event) {
      handler(event);
      return;
    }
    handler({ type: 'error', message: `malformed message from the supervisor: ${describe(message)}` });
    channel.close();
  });
}

function describe(message: unknown): string {
  const text = JSON.stringify(message) ?? String(message);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** Sends a CLI message (resize, signal) on an attach or exec channel. */
export function sendClientMessage(channel: Channel, message: ClientMessage): void {
  channel.send(message);
}

export class SupervisorClient {
  constructor(
    private readonly mux: Mux,
    /** The VM's name, for error messages. */
    readonly vmName: string,
  ) {}

  /** Connects over an already open socket (tests, or a caller that dialled itself). */
  static over(socket: net.Socket, vmName: string): SupervisorClient {
    return new SupervisorClient(new Mux(socket, { side: 'host', startInSync: false }), vmName);
  }

  /**
   * Connects to a VM's supervisor, waiting for its socket while the supervisor is starting, and
   * giving up at once when the record says it is gone.
   */
  static async connect(store: StateStore, record: VmRecord, timeoutMs = 15_000): Promise<SupervisorClient> {
    const name = record.config.name;
    const socket = await retryUntil(() => connectUnix(vmFiles(store.vmDir(record.id)).controlSocket), {
      timeoutMs,
      intervalMs: 20,
      onFailure: () => {
        const current = store.read(record.id);
        const status = current ? statusOf(current) : 'dead';
        if (status === 'dead' || status === 'failed' || status === 'stopped') {
          throw new ShoalError(current?.error ? `VM ${name} failed: ${current.error}` : `VM ${name} is ${status}`);
        }
      },
      timeoutError: (err) => new ShoalError(`cannot reach the supervisor of ${name}: ${err.message}`),
    });
    return SupervisorClient.over(socket, name);
  }

  /** Follows the VM (progress, running, exit/error); with stdio, the main container's streams travel on it. */
  attach(stdio: boolean): Channel {
    return this.mux.open({ kind: 'attach', stdio });
  }

  /** Runs a command in the VM; the channel carries its stdio and ends with `exit` or `error`. */
  exec(request: Omit<ExecControlRequest, 'kind'>): Channel {
    const body: ExecControlRequest = { kind: 'exec', ...request };
    return this.mux.open(body);
  }

  /** Follows a kept process of the agent's table; the channel carries it as an exec's. */
  attachKept(id: number): Channel {
    return this.mux.open({ kind: 'kept-attach', id });
  }

  /**
   * The agent's kept processes (src/protocol/kept.ts), parsed and bounded where they enter:
   * they come from the guest. Rejects when the agent answers with an error (an older agent
   * does not know the request) or the link is lost.
   */
  keptList(timeoutMs = 30_000): Promise<KeptProcessInfo[]> {
    return new Promise<KeptProcessInfo[]>((resolve, reject) => {
      const channel = this.mux.open({ kind: 'kept-list' });
      channel.setDataHandler(() => undefined);
      let result: KeptProcessInfo[] | undefined;
      let error: string | undefined;
      const timer = setTimeout(() => {
        error = `no list of kept processes from ${this.vmName} within ${Math.round(timeoutMs / 1000)} s`;
        channel.close();
      }, timeoutMs);
      channel.on('message', (message: Record<string, unknown>) => {
        if (message.type === 'error') error ??= String(message.message).slice(0, 500);
        else result ??= parseKeptList(message);
      });
      channel.on('close', () => {
        clearTimeout(timer);
        channel.close();
        if (result && error === undefined) resolve(result);
        else reject(new ShoalError(error ?? `malformed list of kept processes from ${this.vmName}`));
      });
    });
  }

  /** A file operation in the container; the channel carries the exchange of src/protocol/files.ts. */
  files(request: Omit<FilesControlRequest, 'kind'>): Channel {
    const body: FilesControlRequest = { kind: 'files', ...request };
    return this.mux.open(body);
  }

  /** Resolves once the VM runs (or already ended, so it did run), or says why it never will. */
  waitUntilRunning(progress?: (message: string) => void): Promise<RunningOutcome> {
    return new Promise<RunningOutcome>((resolve) => {
      const channel = this.attach(false);
      channel.setDataHandler(() => undefined);
      let done = false;
      const settle = (outcome: RunningOutcome): void => {
        if (done) return;
        done = true;
        resolve(outcome);
      };
      onControlEvents(channel, (event) => {
        if (event.type === 'progress') progress?.(event.message);
        else if (event.type === 'running') settle({ outcome: 'running' });
        else if (event.type === 'exit') settle({ outcome: 'exited' });
        else if (event.type === 'error') settle({ outcome: 'error', message: event.message });
      });
      channel.on('close', () => settle({ outcome: 'lost' }));
    });
  }

  /** Asks the supervisor to write the VM's snapshot files into dir (see src/snapshot/create.ts). */
  snapshot(dir: string, progress?: (message: string) => void): Promise<SnapshotResult> {
    return this.oneShot({ kind: 'snapshot', dir }, progress, (event) => (event.type === 'result' && 'vmSpec' in event ? event : undefined), `lost the supervisor of ${this.vmName} during the snapshot`);
  }

  /** Asks for a graceful stop; resolves once the supervisor took the request. */
  async stop(timeoutSeconds?: number): Promise<void> {
    await this.oneShot(timeoutSeconds === undefined ? { kind: 'stop' } : { kind: 'stop', timeoutSeconds }, undefined, (event) => (event.type === 'result' ? event : undefined), 'the connection to the VM was lost');
  }

  close(): void {
    this.mux.destroy();
  }

  /** A request answered by one result (after any progress), or an error; the channel then closes. */
  private oneShot<T>(request: ControlRequest, progress: ((message: string) => void) | undefined, pick: (event: ControlEvent) => T | undefined, lost: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const channel = this.mux.open(request);
      channel.setDataHandler(() => undefined);
      let result: T | undefined;
      let error: string | undefined;
      onControlEvents(channel, (event) => {
        if (event.type === 'progress') progress?.(event.message);
        else if (event.type === 'error') error ??= event.message;
        else {
          const picked = pick(event);
          if (picked !== undefined) result = picked;
          else error ??= `unexpected reply from the supervisor: ${event.type}`;
        }
      });
      channel.on('close', () => {
        channel.close();
        if (error !== undefined) reject(new ShoalError(error));
        else if (result !== undefined) resolve(result);
        else reject(new ShoalError(lost));
      });
    });
  }
}
