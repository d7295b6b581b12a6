/**
 * The VM's main container as the supervisor follows it: the channel of its `podman run` (or, in
 * a restored VM, the agent's `attach-persistent` of it), its output to the container log and to
 * attached CLIs, its exit code, and what attached CLIs send it (signals, window size, stdin).
 */
import type { Mux } from '../protocol/mux';
import { STDERR, STDIN, STDOUT, type Channel } from '../protocol/mux';
import { exitCodeOf, type TerminalSize } from '../protocol/messages';
import { ShoalError } from '../util/errors';
import { ContainerLogWriter } from './container-log';

/** Where the container's output goes besides its log: the attached CLIs. */
export interface OutputSink {
  write(stream: number, data: Buffer): Promise<void>;
  endStream(stream: number): void;
}

export class MainContainer {
  private channel: Channel | undefined;
  private announce: (channel: Channel) => void = () => undefined;
  /** Resolves with the first main channel: stdin that arrives before the container starts waits for it. */
  private readonly started = new Promise<Channel>((resolve) => { this.announce = resolve; });
  /** The attached terminal's latest window size (-t), which the container's terminal follows. */
  private size: TerminalSize | undefined;
  /**
   * Set by the supervisor when a snapshot replaced the agent session (Firecracker resets vsock):
   * a follower on the old session that closes without an exit is taken over on the new one.
   */
  relink: { from: Mux; ready: Promise<Mux> } | undefined;

  constructor(private readonly containerLog: string, private readonly output: OutputSink) {}

  /** The channel while the container is followed, else undefined (not started yet, or ended). */
  get current(): Channel | undefined {
    return this.channel;
  }

  get terminalSize(): TerminalSize | undefined {
    return this.size;
  }

  /** Takes the channel of the container (`podman run`, or the attach-persistent follower). */
  adopt(channel: Channel): void {
    this.channel = channel;
    this.announce(channel);
  }

  resize(size: TerminalSize): void {
    this.size = size;
    this.channel?.send({ type: 'resize', ...size });
  }

  /** Delivers a signal to the running container; false when there is none yet. */
  signal(signal: string): boolean {
    if (!this.channel) return false;
    this.channel.send({ type: 'signal', signal });
    return true;
  }

  async writeStdin(data: Buffer): Promise<void> {
    await (await this.started).write(STDIN, data);
  }

  endStdin(): void {
    void this.started.then((main) => main.end(STDIN));
  }

  /**
   * The main container's output to its log and to attached CLIs, and its exit code. The channel
   * is the `podman run` exec, or in a restored VM the agent's `attach-persistent` of it, opened
   * on the agent session `session`.
   */
  follow(channel: Channel, session: Mux): Promise<number> {
    const log = new ContainerLogWriter(this.containerLog);
    return new Promise<number>((resolve, reject) => {
      let exitCode: number | undefined;
      let error: string | undefined;
      channel.setDataHandler(async (stream, data) => {
        if (stream !== STDOUT && stream !== STDERR) return;
        log.append(stream, data);
        await this.output.write(stream, data);
      });
      channel.on('eof', (stream: number) => this.output.endStream(stream));
      channel.on('message', (message: Record<string, unknown>) => {
        // A podman run that died without a code counts as killed (137), whatever the signal.
        if (message.type === 'exit') exitCode = exitCodeOf({ code: message.code }, 128 + 9);
        else if (message.type === 'error') error = String(message.message);
      });
      channel.on('close', () => {
        channel.close();
        log.close();
        this.channel = undefined;
        const again = exitCode === undefined ? this.followAgain(session) : undefined;
        if (again) resolve(again);
        else if (exitCode !== undefined) resolve(exitCode);
        else reject(new ShoalError(error ?? 'the container was lost'));
      });
    });
  }

  /**
   * In a restored VM, the main container's `podman run` belongs to the snapshot's old session;
   * the agent hands it over (attach-persistent): its output from now on reaches this VM's log and
   * attached CLIs, and its exit is the VM's. A terminal (-t) main process cannot be handed over:
   * then `podman wait` tells the exit code.
   */
  async followRestored(agent: Mux): Promise<number> {
    const follower = agent.open({ kind: 'attach-persistent' });
    this.adopt(follower);
    try {
      return await this.follow(follower, agent);
    } catch (err) {
      if (!/no persistent process/.test((err as Error).message)) throw err;
      return this.waitWithPodman(agent);
    }
  }

  /** When the session a follower was on was replaced after a snapshot: follow again on the new one. */
  private followAgain(session: Mux): Promise<number> | undefined {
    const relink = this.relink;
    if (relink?.from !== session) return undefined;
    return relink.ready.then((agent) => this.followRestored(agent));
  }

  private waitWithPodman(agent: Mux): Promise<number> {
    const channel = agent.open({ kind: 'exec', argv: ['podman', 'wait', '--interval', '1s', 'main'], stdin: false });
    this.channel = channel;
    return new Promise<number>((resolve, reject) => {
      const out: Buffer[] = [];
      let exitCode: number | undefined;
      let kept = 0;
      // `podman wait` prints one number; a guest that says more is not believed past 4 KiB.
      channel.setDataHandler((stream, data) => {
        if (stream !== STDOUT || kept >= 4096) return;
        out.push(Buffer.from(data.subarray(0, 4096 - kept)));
        kept += Math.min(data.length, 4096 - kept);
      });
      channel.on('message', (message: Record<string, unknown>) => {
        if (message.type === 'exit') exitCode = exitCodeOf(message);
      });
      channel.on('close', () => {
        channel.close();
        this.channel = undefined;
        const code = Number.parseInt(Buffer.concat(out).toString().trim(), 10);
        const again = exitCode === undefined ? this.followAgain(agent) : undefined;
        if (again) resolve(again);
        else if (exitCode === 0 && Number.isInteger(code)) resolve(code);
        else reject(new ShoalError('lost track of the container restored from the snapshot'));
      });
    });
  }
}
