/**
 * The processes the API started, per sandbox: each one's output goes into a bounded ring (for
 * streams and their resumption) and, for buffered execs, into a capped collector. A client that
 * goes away does not stop a process; only its end, a signal or the sandbox's removal does.
 *
 * Every process is also kept by the guest agent (ExecSpec.keep, tagged with its pid here), so
 * what outlives this server's memory (a restart of `shoal serve`, a pause and resume, a fork's
 * children) is found again: before a sandbox's processes are first used, the table adopts the
 * agent's kept processes it does not follow (sync), attached with their recent output.
 */
import { StringDecoder } from 'node:string_decoder';
import type { ExecSpec, KeptProcessInfo, ProcessEnd, RemoteProcess } from './core';
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

/** What the agent keeps for a process of this API: its pid here, its command, where it runs. */
export interface NativeTag {
  pid: number;
  cmd: string[];
  vm: boolean;
}

const TAG_API = 'shoal';
const MAX_TAG_BYTES = 4096;

/** The tag a process is kept with: its pid, and as much of its command as fits. */
export function nativeTag(pid: number, spec: ExecSpec): string {
  const make = (cmd: string[]): string => JSON.stringify({ api: TAG_API, pid, cmd, vm: spec.vm });
  for (const cmd of [spec.argv, spec.argv.slice(0, 16).map((a) => a.slice(0, 128)), [spec.argv[0]!.slice(0, 256)]]) {
    const tag = make(cmd);
    if (Buffer.byteLength(tag) <= MAX_TAG_BYTES) return tag;
  }
  return make([]);
}

/** A tag from the guest (hostile): ours, with a sane pid and command, or undefined. */
export function parseNativeTag(tag: string): NativeTag | undefined {
  if (tag.length > MAX_TAG_BYTES) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(tag);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const { api, pid, cmd, vm } = value as Record<string, unknown>;
  if (api !== TAG_API || typeof pid !== 'number' || !Number.isInteger(pid) || pid < 1 || pid > 999_999_999) return undefined;
  if (!Array.isArray(cmd) || cmd.length > 4096 || !cmd.every((a) => typeof a === 'string')) return undefined;
  return { pid, cmd: cmd as string[], vm: vm === true };
}

/** Where adopted processes come from: the guest agent's table, through the core. */
export interface KeptSource {
  keptProcesses(id: string): Promise<KeptProcessInfo[]>;
  attachKept(id: string, keptId: number): Promise<RemoteProcess>;
}

export class ApiProcess {
  readonly ring: EventRing;
  readonly startedAt: Date;
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
    options: { timeoutSec?: number; collector?: OutputCollector; startedAt?: Date },
  ) {
    this.startedAt = options.startedAt ?? new Date();
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
  /** The pid the process gets (its exec is tagged with it before it starts). */
  readonly pid: number;
  release(): void;
}

export class ProcessTable {
  private readonly bySandbox = new Map<string, { next: number; processes: Map<number, ApiProcess> }>();
  /** Sandboxes whose kept processes were adopted (or are being), by this server's life. */
  private readonly synced = new Map<string, Promise<void>>();
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
      pid: this.entryOf(sandboxId).next++,
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
    slot.release();
    return this.track(slot.sandboxId, new ApiProcess(slot.pid, slot.sandboxId, spec, remote, this.limits.ring, options));
  }

  /**
   * Adopts the guest's kept processes of this API that the table does not follow (after a
   * restart of this server, a resume, in a fork's child), once per sandbox: the first use of a
   * sandbox's processes waits for it. A failure (the VM cannot be reached, an older agent) is
   * not fatal: the next use tries again.
   */
  sync(sandboxId: string, source: KeptSource): Promise<void> {
    let done = this.synced.get(sandboxId);
    if (!done) {
      done = this.adopt(sandboxId, source).catch(() => {
        if (this.synced.get(sandboxId) === done) this.synced.delete(sandboxId);
      });
      this.synced.set(sandboxId, done);
    }
    return done;
  }

  /** The sandbox's guest keeps nothing this table does not follow (it was just booted): no sync needed. */
  nothingKept(sandboxId: string): void {
    if (!this.synced.has(sandboxId)) this.synced.set(sandboxId, Promise.resolve());
  }

  private async adopt(sandboxId: string, source: KeptSource): Promise<void> {
    const kept = await source.keptProcesses(sandboxId);
    const ours = kept.flatMap((info) => {
      const tag = parseNativeTag(info.tag);
      return tag ? [{ info, tag }] : [];
    });
    const entry = this.entryOf(sandboxId);
    // No pid of an adopted process may be handed out again.
    for (const { tag } of ours) entry.next = Math.max(entry.next, tag.pid + 1);
    // The running ones, and the newest ended ones the table would keep anyway.
    const ended = ours.filter((o) => !o.info.running).slice(-this.limits.keepFinished);
    // Bounded as this table is (the list is the guest's): at most maxRunning running ones.
    for (const { info, tag } of [...ours.filter((o) => o.info.running).slice(0, this.limits.maxRunning), ...ended]) {
      if (entry.processes.has(tag.pid)) continue;
      let remote: RemoteProcess;
      try {
        remote = await source.attachKept(sandboxId, info.id);
      } catch {
        continue;
      }
      if (entry.processes.has(tag.pid) || this.bySandbox.get(sandboxId) !== entry) {
        remote.close();
        continue;
      }
      const spec: ExecSpec = { argv: tag.cmd, env: {}, vm: tag.vm, stdin: info.stdin };
      this.track(sandboxId, new ApiProcess(tag.pid, sandboxId, spec, remote, this.limits.ring, { startedAt: new Date(info.startedAt) }));
    }
  }

  private entryOf(sandboxId: string): { next: number; processes: Map<number, ApiProcess> } {
    let entry = this.bySandbox.get(sandboxId);
    if (!entry) {
      entry = { next: 1, processes: new Map() };
      this.bySandbox.set(sandboxId, entry);
    }
    return entry;
  }

  private track(sandboxId: string, process: ApiProcess): ApiProcess {
    const entry = this.entryOf(sandboxId);
    entry.processes.set(process.pid, process);
    void process.finished.then((end) => {
      // The link was lost, not the process (a pause, a stopped supervisor): the guest may still
      // run it. Forget it; the next use of the sandbox asks the guest again.
      if ('error' in end && end.lost === true) {
        if (entry.processes.get(process.pid) === process) entry.processes.delete(process.pid);
        this.synced.delete(sandboxId);
      }
      this.prune(sandboxId);
    });
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
    this.synced.delete(sandboxId);
  }

  private prune(sandboxId: string): void {
    const entry = this.bySandbox.get(sandboxId);
    if (!entry) return;
    const finished = [...entry.processes.values()].filter((p) => !p.running);
    for (const old of finished.slice(0, Math.max(0, finished.length - this.limits.keepFinished))) entry.processes.delete(old.pid);
  }
}
