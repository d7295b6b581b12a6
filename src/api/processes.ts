/**
 * The processes the API started, per sandbox: each one's output goes into a bounded ring (for
 * streams and their resumption) and, for buffered execs, into a capped collector. A client that
 * goes away does not stop a process; only its end, a signal or the sandbox's removal does.
 * Kept in this server's memory: the VMs outlive a restart of `shoal serve`, these records not.
 */
import { StringDecoder } from 'node:string_decoder';
import type { ExecSpec, ProcessEnd, RemoteProcess } from './core';
import { ApiError } from './errors';
import { EventRing, type RingLimits } from './ring';

export interface ProcessLimits {
  /** Running processes per sandbox; one more is refused with 429. */
  maxRunning: number;
  /** Finished processes kept per sandbox (their rings stay resumable). */
  keepFinished: number;
  ring: RingLimits;
}

export const DEFAULT_PROCESS_LIMITS: ProcessLimits = { maxRunning: 64, keepFinished: 32, ring: { maxEvents: 4096, maxBytes: 1024 * 1024 } };

/** What a buffered exec returns, cut at `max` bytes per stream. */
export class OutputCollector {
  stdout = '';
  stderr = '';
  truncated = false;

  constructor(private readonly max: number) {}

  add(stream: 'stdout' | 'stderr', text: string): void {
    const room = this.max - Buffer.byteLength(this[stream]);
    if (room <= 0) {
      if (text.length > 0) this.truncated = true;
      return;
    }
    const bytes = Buffer.from(text);
    if (bytes.length > room) {
      this.truncated = true;
      this[stream] += bytes.subarray(0, room).toString('utf8').replace(/\uFFFD$/, '');
    } else this[stream] += text;
  }
}

export class ApiProcess {
  readonly ring: EventRing;
  readonly startedAt = new Date();
  end: ProcessEnd | undefined;
  timedOut = false;
  private timer: NodeJS.Timeout | undefined;
  readonly finished: Promise<ProcessEnd>;

  constructor(
    readonly pid: number,
    readonly sandboxId: string,
    readonly spec: ExecSpec,
    readonly remote: RemoteProcess,
    ringLimits: RingLimits,
    options: { timeoutSec?: number; collector?: OutputCollector },
  ) {
    this.ring = new EventRing(ringLimits);
    this.ring.push({ type: 'start', pid });
    // Bytes of a character may be split across chunks: decode per stream.
    const decoders = { stdout: new StringDecoder('utf8'), stderr: new StringDecoder('utf8') };
    remote.onOutput((stream, data) => {
      const text = decoders[stream].write(data);
      if (text.length === 0) return;
      this.ring.push({ type: stream, data: text });
      options.collector?.add(stream, text);
    });
    if (options.timeoutSec !== undefined) {
      this.timer = setTimeout(() => {
        this.timedOut = true;
        remote.signal('SIGKILL');
      }, options.timeoutSec * 1000);
    }
    this.finished = remote.done.then((end) => {
      clearTimeout(this.timer);
      for (const stream of ['stdout', 'stderr'] as const) {
        const rest = decoders[stream].end();
        if (rest) {
          this.ring.push({ type: stream, data: rest });
          options.collector?.add(stream, rest);
        }
      }
      this.end = end;
      if ('error' in end) this.ring.push({ type: 'error', message: end.error });
      else this.ring.push({ type: 'exit', exitCode: end.exitCode, signal: end.signal });
      return end;
    });
  }

  get running(): boolean {
    return this.end === undefined;
  }

  info(): ProcessInfo {
    const end = this.end;
    return {
      pid: this.pid,
      cmd: this.spec.argv,
      running: end === undefined,
      exitCode: end && !('error' in end) ? end.exitCode : null,
      signal: end && !('error' in end) ? end.signal : null,
      error: end && 'error' in end ? end.error : null,
      startedAt: this.startedAt.toISOString(),
    };
  }
}

export interface ProcessInfo {
  pid: number;
  cmd: string[];
  running: boolean;
  exitCode: number | null;
  signal: string | null;
  error: string | null;
  startedAt: string;
}

/** Room for one process, taken before its (slow) start: add() uses it, release() gives it back. */
export interface ProcessSlot {
  readonly sandboxId: string;
  release(): void;
}

export class ProcessTable {
  private readonly bySandbox = new Map<string, { next: number; processes: Map<number, ApiProcess> }>();
  /** Processes being started (room taken, not yet added), per sandbox. */
  private readonly starting = new Map<string, number>();

  constructor(private readonly limits: ProcessLimits = DEFAULT_PROCESS_LIMITS) {}

  /**
   * Takes room for a new process, or refuses when the sandbox already runs (or is starting) as
   * many as allowed. Synchronous: the check and the taking cannot be split by another request.
   */
  reserve(sandboxId: string): ProcessSlot {
    const running = this.list(sandboxId).filter((p) => p.running).length + (this.starting.get(sandboxId) ?? 0);
    if (running >= this.limits.maxRunning) throw new ApiError('too_many_requests', `sandbox ${sandboxId} already runs ${running} processes (the limit)`);
    this.starting.set(sandboxId, (this.starting.get(sandboxId) ?? 0) + 1);
    let held = true;
    return {
      sandboxId,
      release: () => {
        if (!held) return;
        held = false;
        const left = (this.starting.get(sandboxId) ?? 1) - 1;
        if (left > 0) this.starting.set(sandboxId, left);
        else this.starting.delete(sandboxId);
      },
    };
  }

  add(slot: ProcessSlot, spec: ExecSpec, remote: RemoteProcess, options: { timeoutSec?: number; collector?: OutputCollector }): ApiProcess {
    const sandboxId = slot.sandboxId;
    slot.release();
    let entry = this.bySandbox.get(sandboxId);
    if (!entry) {
      entry = { next: 1, processes: new Map() };
      this.bySandbox.set(sandboxId, entry);
    }
    const process = new ApiProcess(entry.next++, sandboxId, spec, remote, this.limits.ring, options);
    entry.processes.set(process.pid, process);
    void process.finished.then(() => this.prune(sandboxId));
    return process;
  }

  get(sandboxId: string, pid: number): ApiProcess {
    const process = this.bySandbox.get(sandboxId)?.processes.get(pid);
    if (!process) throw new ApiError('not_found', `no such process: ${pid} in sandbox ${sandboxId}`);
    return process;
  }

  list(sandboxId: string): ApiProcess[] {
    return [...(this.bySandbox.get(sandboxId)?.processes.values() ?? [])];
  }

  /** The sandbox is gone: drop its links and records. */
  forget(sandboxId: string): void {
    for (const process of this.list(sandboxId)) process.remote.close();
    this.bySandbox.delete(sandboxId);
  }

  private prune(sandboxId: string): void {
    const entry = this.bySandbox.get(sandboxId);
    if (!entry) return;
    const finished = [...entry.processes.values()].filter((p) => !p.running);
    for (const old of finished.slice(0, Math.max(0, finished.length - this.limits.keepFinished))) entry.processes.delete(old.pid);
  }
}
