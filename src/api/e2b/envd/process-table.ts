/**
 * envd's processes, per sandbox: what Start ran (with its pid, numbered here, and tag), so List,
 * Connect, SendInput, SendSignal, Update and CloseStdin find it. A process leaves the table when
 * it ends (as in envd: a finished process cannot be connected to). Its output goes to every
 * stream following it (Start's and any Connect's), each an EventQueue; with none, it is dropped.
 * Bounded: at most `maxPerSandbox` processes run per sandbox.
 */
import type { ProcessEnd, RemoteProcess } from '../../core';
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
  stdinOpen: boolean;
  readonly finished: Promise<void>;

  constructor(
    readonly pid: number,
    readonly tag: string | undefined,
    readonly config: ProcessConfigView,
    readonly pty: boolean,
    stdin: boolean,
    readonly remote: RemoteProcess,
    private readonly queueLimits: QueueLimits,
  ) {
    this.stdinOpen = stdin || pty;
    remote.onOutput(async (stream, data) => {
      const event: OutputEvent = { kind: 'data', stream: pty ? 'pty' : stream, data };
      const waits = [...this.followers].map((q) => q.push(event, data.length)).filter((p): p is Promise<void> => p !== undefined);
      if (waits.length > 0) await Promise.all(waits);
    });
    this.finished = remote.done.then((end) => {
      const last = endEvent(end);
      for (const q of this.followers) q.end(last);
      this.followers.clear();
    });
  }

  /** A stream of this process's events from now on (Start's first event is its start). */
  follow(): EventQueue<OutputEvent> {
    const queue = new EventQueue<OutputEvent>(this.queueLimits);
    this.followers.add(queue);
    return queue;
  }

  unfollow(queue: EventQueue<OutputEvent>): void {
    this.followers.delete(queue);
    queue.close();
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

  /** Takes a place for a start (false: the sandbox already runs its most); give it back with release. */
  reserve(vmId: string): boolean {
    const s = this.of(vmId);
    if (s.byPid.size + s.reserved >= this.limits.maxPerSandbox) return false;
    s.reserved++;
    return true;
  }

  release(vmId: string): void {
    const s = this.of(vmId);
    s.reserved = Math.max(0, s.reserved - 1);
    this.drop(vmId, s);
  }

  tagTaken(vmId: string, tag: string): boolean {
    return [...this.of(vmId).byPid.values()].some((p) => p.tag === tag);
  }

  /** Adds a started process (its reservation becomes its place); it leaves the table when it ends. */
  add(vmId: string, make: (pid: number) => EnvdProcess): EnvdProcess {
    const s = this.of(vmId);
    s.reserved = Math.max(0, s.reserved - 1);
    const pid = this.nextPid;
    this.nextPid = this.nextPid >= 4_000_000 ? 1000 : this.nextPid + 1;
    const process = make(pid);
    s.byPid.set(pid, process);
    void process.finished.then(() => {
      s.byPid.delete(pid);
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
