/**
 * The CLIs attached to this VM over the control socket: each gets the progress so far and from
 * now on, `running`, and the final exit or error; those attached with stdio also get the main
 * container's output, and (with -i) feed its stdin. Signals and window sizes they send go to the
 * main container; a signal before it starts aborts the start.
 */
import { parseClientMessage } from '../control/messages';
import { sendEvent } from '../control/server';
import { STDIN, type Channel } from '../protocol/mux';
import type { MainContainer, OutputSink } from './main-container';
import type { VmRecordHandle } from './vm-record-handle';

export class Attachments implements OutputSink {
  /** CLI channels that asked for progress and the final result. */
  private readonly watchers = new Set<Channel>();
  /** Watchers that also want the main container's stdio. */
  private readonly attached = new Set<Channel>();
  /** Progress so far, replayed to CLIs that attach late. */
  private readonly progressLog: string[] = [];
  private arrived: () => void = () => undefined;
  /** Resolves when the first CLI attached (an attached `shoal run` must see the container's first bytes). */
  readonly first = new Promise<void>((resolve) => { this.arrived = resolve; });
  /** Set once the main container exists (the two refer to each other). */
  main: MainContainer | undefined;
  /** The VM's end, once it came: a CLI whose attach request is handled after it gets it at once. */
  private ended: { exitCode?: number; error?: string } | undefined;

  constructor(private readonly record: VmRecordHandle, private readonly stop: () => void) {}

  progress(message: string): void {
    this.progressLog.push(message);
    for (const watcher of this.watchers) sendEvent(watcher, { type: 'progress', message });
  }

  running(): void {
    const { config, id } = this.record.current;
    for (const watcher of this.watchers) sendEvent(watcher, { type: 'running', name: config.name, id });
  }

  /** The VM's end, to every watcher, which is then closed. */
  end(result: { exitCode?: number; error?: string }): void {
    this.ended = result;
    for (const watcher of this.watchers) sendEnd(watcher, result);
  }

  async write(stream: number, data: Buffer): Promise<void> {
    await Promise.all([...this.attached].map((client) => client.write(stream, data)));
  }

  endStream(stream: number): void {
    for (const client of this.attached) client.end(stream);
  }

  attach(channel: Channel, stdio: boolean): void {
    const record = this.record.current;
    for (const message of this.progressLog) sendEvent(channel, { type: 'progress', message });
    if (this.ended) {
      // A CLI that connected while the VM was ending (a start that failed at once): it would
      // otherwise see only the socket close, and say the supervisor went away.
      channel.setDataHandler(() => undefined);
      sendEnd(channel, this.ended);
      return;
    }
    this.watchers.add(channel);
    if (stdio) this.attached.add(channel);
    channel.on('close', () => {
      this.watchers.delete(channel);
      this.attached.delete(channel);
      channel.close();
    });
    channel.on('message', (value: Record<string, unknown>) => {
      const message = parseClientMessage(value);
      if (message?.type === 'resize') {
        // The attached terminal's window: the latest size wins, also for a container not yet started.
        if (!this.record.current.config.tty) return;
        this.main?.resize({ cols: message.cols, rows: message.rows });
        return;
      }
      if (message?.type !== 'signal') return;
      // Like podman's sig-proxy once the container runs; before that, a signal aborts the start.
      if (!this.main?.signal(message.signal)) this.stop();
    });
    if (stdio && record.config.interactive) {
      // Input that arrives before the container starts waits for it (holding back the CLI's credit).
      channel.setDataHandler(async (stream, data) => {
        if (stream === STDIN) await this.main?.writeStdin(data);
      });
      channel.on('eof', (stream: number) => {
        if (stream === STDIN) this.main?.endStdin();
      });
    } else channel.setDataHandler(() => undefined);
    if (record.state === 'running') sendEvent(channel, { type: 'running', name: record.config.name, id: record.id });
    this.arrived();
  }
}

function sendEnd(channel: Channel, result: { exitCode?: number; error?: string }): void {
  if (result.error !== undefined) sendEvent(channel, { type: 'error', message: result.error });
  else sendEvent(channel, { type: 'exit', code: result.exitCode ?? null });
  channel.close();
}
