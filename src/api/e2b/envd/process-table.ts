/**
 * envd's processes, per sandbox: what Start ran (with its pid, numbered here, and tag), so List,
 * Connect, SendInput, SendSignal, Update and CloseStdin find it. A process leaves the table when
 * it ends (as in envd: a finished process cannot be connected to). Its output goes to every
 * stream following it (Start's and any Connect's), each an EventQueue; with none, it is dropped.
 * Bounded: at most `maxPerSandbox` processes run per sandbox.
 *
 * Every process is kept by the guest agent too (ExecSpec.keep, tagged with its pid and config),
 * as envd keeps its own: after a restart of this server or a pause and resume, the table adopts
 * the running ones it does not follow (sync), so List shows them and Connect replays their
 * recent output. A process whose link was lost (not ended) leaves the table until then.
 */
import type { KeptProcessInfo, ProcessEnd, RemoteProcess } from '../../core';
import { EventQueue, type QueueLimits, DEFAULT_QUEUE_LIMITS } from './event-queue';

export interface ProcessConfigView {
  cmd: string;
  args: string[];
  envs: Record<string, string>;
  cwd?: string;
}

export type OutputEvent =
  | { kind: 'start'; pid: number }
  | { kind: 'data'; stream: 'stdout' | 'stderr' | 'pty'; data: Buffer }
  | { kind: 'end'; exitCode: number; exited: boolean; status: string; error?: string }
  | { kind: 'keepalive' };

export class EnvdProcess {
  private readonly followers = new Set<EventQueue<OutputEvent>>();
  private backlog: Backlog | undefined;
  stdinOpen: boolean;
  readonly finished: Promise<ProcessEnd>;

  constructor(
    readonly pid: number,
    readonly tag: string | undefined,
    readonly config: ProcessConfigView,
    readonly pty: boolean,
    stdin: boolean,
    readonly remote: RemoteProcess,
    private readonly queueLimits: QueueLimits,
    /**
     * Adopted from the guest's kept processes (its recent output comes first on the link):
     * output while no stream follows is held, its last BACKLOG_BYTES per stream, for the next
     * Connect, so it replays what the guest kept.
     */
    adopted = false,
  ) {
    this.stdinOpen = stdin || pty;
    if (adopted) this.backlog = new Backlog(BACKLOG_BYTES);
    remote.onOutput(async (stream, data) => {
      const event: OutputEvent = { kind: 'data', stream: pty ? 'pty' : stream, data };
      if (this.followers.size === 0) this.backlog?.push(event, data);
      const waits = [...this.followers].map((q) => q.push(event, data.length)).filter((p): p is Promise<void> => p !== undefined);
      if (waits.length > 0) await Promise.all(waits);
    });
    this.finished = remote.done.then((end) => {
      // A lost link is not the process's end (it may run on in the guest): no end event.
      const last = 'error' in end && end.lost === true ? undefined : endEvent(end);
      for (const q of this.followers) q.end(last);
      this.followers.clear();
      return end;
    });
  }

  /** A stream of this process's events from now on, `first` first (Start's and Connect's start), then any held backlog. */
  follow(first?: OutputEvent): EventQueue<OutputEvent> {
    const queue = new EventQueue<OutputEvent>(this.queueLimits);
    if (first) queue.push(first);
    for (const event of this.backlog?.take() ?? []) queue.push(event, event.kind === 'data' ? event.data.length : 0);
    this.followers.add(queue);
    return queue;
  }

  unfollow(queue: EventQueue<OutputEvent>): void {
    this.followers.delete(queue);
    queue.close();
  }
}

/** What an adopted process holds per stream while no stream follows it (the agent's ring size). */
export const BACKLOG_BYTES = 64 * 1024;

/** Output events in order, at most `perStream` bytes of each stream (the oldest events go first). */
export class Backlog {
  private events: Array<{ event: OutputEvent; stream: string; bytes: number }> = [];
  private readonly bytes = new Map<string, number>();

  constructor(private readonly perStream: number) {}

  push(whole: OutputEvent & { kind: 'data' }, data: Buffer): void {
    // One chunk larger than the bound: its tail.
    const event = data.length > this.perStream ? { ...whole, data: data.subarray(data.length - this.perStream) } : whole;
    data = event.data;
    this.events.push({ event, stream: event.stream, bytes: data.length });
    this.bytes.set(event.stream, (this.bytes.get(event.stream) ?? 0) + data.length);
    while ((this.bytes.get(event.stream) ?? 0) > this.perStream) {
      const i = this.events.findIndex((e) => e.stream === event.stream);
      const [old] = this.events.splice(i, 1);
      this.bytes.set(event.stream, (this.bytes.get(event.stream) ?? 0) - old!.bytes);
    }
  }

  /** Everything held, emptied. */
  take(): OutputEvent[] {
    const events = this.events.map((e) => e.event);
    this.events = [];
    this.bytes.clear();
    return events;
  }
}

/** envd's end event: Go's ProcessState (exit code, or -1 and "signal: killed"). */
export function endEvent(end: ProcessEnd): OutputEvent {
  if ('error' in end) return { kind: 'end', exitCode: -1, exited: false, status: 'error', error: end.error };
  if (end.signal !== null) return { kind: 'end', exitCode: -1, exited: false, status: `signal: ${signalWord(end.signal)}` };
  const code = end.exitCode ?? -1;
  return { kind: 'end', exitCode: code, exited: true, status: `exit status ${code}` };
}

function signalWord(signal: string): string {
  const words: Record<string, string> = { SIGKILL: 'killed', SIGTERM: 'terminated', SIGINT: 'interrupt', SIGHUP: 'hangup', SIGPIPE: 'broken pipe' };
  return words[signal] ?? signal.toLowerCase();
}

export interface ProcessTableLimits {
  maxPerSandbox: number;
  queue: QueueLimits;
}

export const DEFAULT_PROCESS_TABLE_LIMITS: ProcessTableLimits = { maxPerSandbox: 64, queue: DEFAULT_QUEUE_LIMITS };

/** What the agent keeps for an envd process: its pid and tag here, its config (without envs). */
export interface EnvdTag {
  pid: number;
  tag?: string;
  cmd: string;
  args: string[];
  cwd?: string;
}

const TAG_API = 'envd';
const MAX_TAG_BYTES = 4096;

/** The tag a process is kept with; args are cut (then dropped) when the whole would not fit. */
export function envdTag(pid: number, tag: string | undefined, config: ProcessConfigView): string {
  const make = (args: string[]): string => JSON.stringify({ api: TAG_API, pid, ...(tag !== undefined ? { tag } : {}), cmd: config.cmd.slice(0, 1024), args, ...(config.cwd !== undefined ? { cwd: config.cwd.slice(0, 1024) } : {}) });
  for (const args of [config.args, config.args.slice(0, 16).map((a) => a.slice(0, 128)), []]) {
    const text = make(args);
    if (Buffer.byteLength(text) <= MAX_TAG_BYTES) return text;
  }
  return JSON.stringify({ api: TAG_API, pid, cmd: config.cmd.slice(0, 256), args: [] });
}

/** A tag from the guest (hostile): ours, with sane fields, or undefined. */
export function parseEnvdTag(text: string): EnvdTag | undefined {
  if (text.length > MAX_TAG_BYTES) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const { api, pid, tag, cmd, args, cwd } = value as Record<string, unknown>;
  if (api !== TAG_API || typeof pid !== 'number' || !Number.isInteger(pid) || pid < 1 || pid > 4_000_000) return undefined;
  if (typeof cmd !== 'string' || !Array.isArray(args) || args.length > 4096 || !args.every((a) => typeof a === 'string')) return undefined;
  if (tag !== undefined && (typeof tag !== 'string' || tag.length === 0 || tag.length > 256)) return undefined;
  if (cwd !== undefined && typeof cwd !== 'string') return undefined;
  return { pid, cmd, args: args as string[], ...(tag !== undefined ? { tag } : {}), ...(cwd !== undefined ? { cwd } : {}) };
}

/** Where adopted processes come from: the guest agent's table, through the core. */
export interface KeptSource {
  keptProcesses(id: string): Promise<KeptProcessInfo[]>;
  attachKept(id: string, keptId: number): Promise<RemoteProcess>;
}

class SandboxProcesses {
  readonly byPid = new Map<number, EnvdProcess>();
  /** Places taken by starts still under way (so concurrent starts cannot pass the limit). */
  reserved = 0;
}

export class EnvdProcessTable {
  private readonly sandboxes = new Map<string, SandboxProcesses>();
  /** One counter for all sandboxes, so a pid is not reused soon (a stale handle's kill misses). */
  private nextPid = 1000;

  constructor(readonly limits: ProcessTableLimits = DEFAULT_PROCESS_TABLE_LIMITS) {}

  private of(vmId: string): SandboxProcesses {
    let s = this.sandboxes.get(vmId);
    if (!s) {
      s = new SandboxProcesses();
      this.sandboxes.set(vmId, s);
    }
    return s;
  }

  /** Sandboxes whose kept processes were adopted (or are being), by this server's life. */
  private readonly synced = new Map<string, Promise<void>>();

  /**
   * Takes a place for a start and the pid it will have (undefined: the sandbox already runs its
   * most); give the place back with release, or fill it with add.
   */
  reserve(vmId: string): number | undefined {
    const s = this.of(vmId);
    if (s.byPid.size + s.reserved >= this.limits.maxPerSandbox) return undefined;
    s.reserved++;
    return this.takePid();
  }

  private takePid(): number {
    const pid = this.nextPid;
    this.nextPid = this.nextPid >= 4_000_000 ? 1000 : this.nextPid + 1;
    return pid;
  }

  /**
   * Adopts the guest's running kept envd processes the table does not follow, once per sandbox
   * (again after a lost link); a failure is not fatal, the next call tries again.
   */
  sync(vmId: string, source: KeptSource): Promise<void> {
    let done = this.synced.get(vmId);
    if (!done) {
      done = this.adopt(vmId, source).catch(() => {
        if (this.synced.get(vmId) === done) this.synced.delete(vmId);
      });
      this.synced.set(vmId, done);
    }
    return done;
  }

  private async adopt(vmId: string, source: KeptSource): Promise<void> {
    const kept = await source.keptProcesses(vmId);
    const ours = kept.flatMap((info) => {
      const tag = info.running ? parseEnvdTag(info.tag) : undefined;
      return tag ? [{ info, tag }] : [];
    });
    // No adopted pid may be handed out again (the counter is this server's, reset by a restart).
    for (const { tag } of ours) if (tag.pid >= this.nextPid && tag.pid < 4_000_000) this.nextPid = tag.pid + 1;
    const s = this.of(vmId);
    for (const { info, tag } of ours.slice(0, this.limits.maxPerSandbox)) {
      if (s.byPid.has(tag.pid) || s.byPid.size >= this.limits.maxPerSandbox) continue;
      let remote: RemoteProcess;
      try {
        remote = await source.attachKept(vmId, info.id);
      } catch {
        continue;
      }
      if (s.byPid.has(tag.pid) || this.sandboxes.get(vmId) !== s) {
        remote.close();
        continue;
      }
      const config: ProcessConfigView = { cmd: tag.cmd, args: tag.args, envs: {}, ...(tag.cwd !== undefined ? { cwd: tag.cwd } : {}) };
      this.track(vmId, s, new EnvdProcess(tag.pid, tag.tag, config, info.tty, info.stdin, remote, this.limits.queue, true));
    }
  }

  release(vmId: string): void {
    const s = this.of(vmId);
    s.reserved = Math.max(0, s.reserved - 1);
    this.drop(vmId, s);
  }

  tagTaken(vmId: string, tag: string): boolean {
    return [...this.of(vmId).byPid.values()].some((p) => p.tag === tag);
  }

  /** Adds a started process (its reservation, with its pid, becomes its place); it leaves the table when it ends. */
  add(vmId: string, pid: number, make: (pid: number) => EnvdProcess): EnvdProcess {
    const s = this.of(vmId);
    s.reserved = Math.max(0, s.reserved - 1);
    return this.track(vmId, s, make(pid));
  }

  private track(vmId: string, s: SandboxProcesses, process: EnvdProcess): EnvdProcess {
    s.byPid.set(process.pid, process);
    void process.finished.then((end) => {
      if (s.byPid.get(process.pid) === process) s.byPid.delete(process.pid);
      // Lost, not ended: the guest may run it on; the next call asks the guest again.
      if ('error' in end && end.lost === true) this.synced.delete(vmId);
      this.drop(vmId, s);
    });
    return process;
  }

  list(vmId: string): EnvdProcess[] {
    return [...(this.sandboxes.get(vmId)?.byPid.values() ?? [])];
  }

  find(vmId: string, selector: { pid?: number; tag?: string }): EnvdProcess | undefined {
    const s = this.sandboxes.get(vmId);
    if (!s) return undefined;
    if (selector.pid !== undefined) return s.byPid.get(selector.pid);
    return [...s.byPid.values()].find((p) => p.tag === selector.tag);
  }

  private drop(vmId: string, s: SandboxProcesses): void {
    if (s.byPid.size === 0 && s.reserved === 0) this.sandboxes.delete(vmId);
  }
}
