/**
 * envd's `process.Process` service on shoal's core: Start runs the command in the sandbox's
 * container (core.exec, a terminal for PTYs) and streams start / data / end events; Connect
 * follows a running one; List, SendInput, StreamInput, SendSignal, Update (PTY size) and
 * CloseStdin act on the table's processes. Every call is authenticated first (sandbox-auth.ts).
 *
 * Time limits: the SDK sends `timeoutMs` as Connect's deadline (Connect-Timeout-Ms; none for 0).
 * A Start whose deadline passes kills its process (SIGKILL), as envd does; a client that merely
 * goes away (a background command's handle disconnecting) leaves it running.
 */
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import type { Core, ExecSpec } from '../../core';
import { containerPathComponents } from '../../../protocol/files';
import { toConnectError } from './errors';
import { keepaliveMsOf } from './event-queue';
import { Process, Signal, type ProcessEvent, type ProcessSelector, type StartRequest } from './gen/process/process_pb';
import { envdTag, EnvdProcess, EnvdProcessTable, type OutputEvent } from './process-table';
import { authenticate, requireRunning, type EnvdSandbox } from './sandbox-auth';
import { commandArgv, execUser, userOfAuthorization, withCwd } from './users';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { ProcessEventSchema } from './gen/process/process_pb';

/** Input bounds: a hostile client must not make the server hold much. */
export const PROCESS_LIMITS = { maxArgs: 4096, maxArgBytes: 256 * 1024, maxEnvs: 512, maxEnvBytes: 256 * 1024, maxTagLength: 256, maxInputBytes: 1024 * 1024 };

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Whether the image has /bin/bash, per VM (the SDK's commands are bash's). */
export class BashProbe {
  private readonly known = new Map<string, boolean>();

  constructor(private readonly core: Core) {}

  async has(vmId: string): Promise<boolean> {
    const known = this.known.get(vmId);
    if (known !== undefined) return known;
    let has = false;
    try {
      const entry = await this.core.files.stat(vmId, '/bin/bash');
      has = entry.type === 'file' || entry.type === 'symlink';
    } catch {
      has = false;
    }
    if (this.known.size >= 4096) this.known.clear();
    this.known.set(vmId, has);
    return has;
  }
}

/**
 * Whether the container's own user is root, per VM: then E2B's `root` is that user too and runs
 * on the direct path (killable), not through podman exec. Asked once, with `id -u`.
 */
export class RootProbe {
  private readonly known = new Map<string, Promise<boolean>>();

  constructor(private readonly core: Core) {}

  isRoot(vmId: string): Promise<boolean> {
    let known = this.known.get(vmId);
    if (known === undefined) {
      known = this.ask(vmId);
      if (this.known.size >= 4096) this.known.clear();
      this.known.set(vmId, known);
    }
    return known;
  }

  private async ask(vmId: string): Promise<boolean> {
    try {
      const p = await this.core.exec(vmId, { argv: ['id', '-u'], env: {}, vm: false, stdin: false });
      let out = '';
      p.onOutput((stream, data) => { if (stream === 'stdout' && out.length < 64) out += data.toString(); });
      const timer = setTimeout(() => p.signal('SIGKILL'), 30_000);
      const end = await p.done;
      clearTimeout(timer);
      return !('error' in end) && end.exitCode === 0 && out.trim() === '0';
    } catch {
      this.known.delete(vmId);
      return false;
    }
  }
}

type EventInit = MessageInitShape<typeof ProcessEventSchema>;

function eventInit(e: OutputEvent): EventInit {
  switch (e.kind) {
    case 'start': return { event: { case: 'start', value: { pid: e.pid } } };
    case 'data': return { event: { case: 'data', value: { output: { case: e.stream, value: e.data } } } };
    case 'end': return { event: { case: 'end', value: { exitCode: e.exitCode, exited: e.exited, status: e.status, ...(e.error !== undefined ? { error: e.error } : {}) } } };
    case 'keepalive': return { event: { case: 'keepalive', value: {} } };
  }
}

export interface ProcessServiceDeps {
  core: Core;
  table: EnvdProcessTable;
  bash: BashProbe;
  root: RootProbe;
}

export function processService({ core, table, bash, root }: ProcessServiceDeps): ServiceImpl<typeof Process> {
  const sandboxOf = (ctx: HandlerContext): EnvdSandbox => {
    try {
      const sandbox = authenticate(core, (name) => ctx.requestHeader.get(name) ?? undefined);
      requireRunning(sandbox);
      return sandbox;
    } catch (err) {
      throw toConnectError(err);
    }
  };
  const processOf = async (sandbox: EnvdSandbox, selector: ProcessSelector | undefined): Promise<EnvdProcess> => {
    await table.sync(sandbox.vm.id, core);
    const s = selector?.selector;
    if (!s || s.case === undefined) throw new ConnectError('process selector (pid or tag) is missing', Code.InvalidArgument);
    const p = s.case === 'pid' ? table.find(sandbox.vm.id, { pid: s.value }) : table.find(sandbox.vm.id, { tag: s.value.slice(0, PROCESS_LIMITS.maxTagLength) });
    if (!p) throw new ConnectError(`process with ${s.case} ${String(s.value).slice(0, 64)} not found`, Code.NotFound);
    return p;
  };
  const input = async (p: EnvdProcess, data: Buffer, asPty: boolean): Promise<void> => {
    if (data.length > PROCESS_LIMITS.maxInputBytes) throw new ConnectError(`input larger than ${PROCESS_LIMITS.maxInputBytes} bytes`, Code.InvalidArgument);
    if (asPty !== p.pty) throw new ConnectError(p.pty ? 'this process is a PTY: send pty input' : 'this process has no PTY: send stdin input', Code.FailedPrecondition);
    if (!p.stdinOpen) throw new ConnectError('the process\'s stdin is closed (or it was started without stdin)', Code.FailedPrecondition);
    await p.remote.writeStdin(data);
  };

  /** Streams a process's events until it ends, the client leaves, or (for Start) the deadline. */
  async function* stream(p: EnvdProcess, ctx: HandlerContext, first?: OutputEvent): AsyncGenerator<{ event: EventInit }> {
    const queue = p.follow(first);
    try {
      for await (const e of queue.events(ctx.signal, keepaliveMsOf(ctx.requestHeader.get('keepalive-ping-interval')), () => ({ kind: 'keepalive' }))) {
        yield { event: eventInit(e) };
      }
    } finally {
      p.unfollow(queue);
    }
  }

  return {
    async *start(req: StartRequest, ctx: HandlerContext) {
      const sandbox = sandboxOf(ctx);
      const spec = await execSpecOf(req, ctx, sandbox, bash, root);
      // What the guest kept from before (a restart of this server, a resume) first: its pids and tags stay taken.
      await table.sync(sandbox.vm.id, core);
      if (req.tag !== undefined && table.tagTaken(sandbox.vm.id, req.tag)) throw new ConnectError(`a process tagged ${req.tag.slice(0, 64)} runs already`, Code.AlreadyExists);
      const pid = table.reserve(sandbox.vm.id);
      if (pid === undefined) throw new ConnectError(`sandbox ${sandbox.vm.name} runs ${table.limits.maxPerSandbox} processes already`, Code.ResourceExhausted);
      let p: EnvdProcess;
      try {
        const config = { cmd: req.process!.cmd, args: req.process!.args, envs: req.process!.envs, ...(req.process!.cwd !== undefined ? { cwd: req.process!.cwd } : {}) };
        // Kept by the guest agent, as envd keeps it: it outlives this server and a pause.
        const remote = await core.exec(sandbox.vm.id, { ...spec, keep: envdTag(pid, req.tag, config) });
        p = table.add(sandbox.vm.id, pid, (id) => new EnvdProcess(id, req.tag, config, req.pty !== undefined, req.stdin === true, remote, table.limits.queue));
      } catch (err) {
        table.release(sandbox.vm.id);
        throw toConnectError(err);
      }
      // The deadline (timeoutMs) ends the process, not only this stream.
      const timeoutMs = ctx.timeoutMs();
      const timer = timeoutMs !== undefined && timeoutMs > 0 ? setTimeout(() => p.remote.signal('SIGKILL'), timeoutMs) : undefined;
      void p.finished.then(() => clearTimeout(timer));
      yield* stream(p, ctx, { kind: 'start', pid: p.pid });
    },

    async *connect(req, ctx) {
      const sandbox = sandboxOf(ctx);
      const p = await processOf(sandbox, req.process);
      yield* stream(p, ctx, { kind: 'start', pid: p.pid });
    },

    async list(_req, ctx) {
      const sandbox = sandboxOf(ctx);
      await table.sync(sandbox.vm.id, core);
      return {
        processes: table.list(sandbox.vm.id).map((p) => ({ pid: p.pid, ...(p.tag !== undefined ? { tag: p.tag } : {}), config: { cmd: p.config.cmd, args: p.config.args, envs: p.config.envs, ...(p.config.cwd !== undefined ? { cwd: p.config.cwd } : {}) } })),
      };
    },

    async sendInput(req, ctx) {
      const p = await processOf(sandboxOf(ctx), req.process);
      const i = req.input?.input;
      if (!i || i.case === undefined) throw new ConnectError('input is missing', Code.InvalidArgument);
      await input(p, Buffer.from(i.value), i.case === 'pty');
      return {};
    },

    async streamInput(requests, ctx) {
      const sandbox = sandboxOf(ctx);
      let p: EnvdProcess | undefined;
      for await (const req of requests) {
        const e = req.event;
        if (e.case === 'start') p = await processOf(sandbox, e.value.process);
        else if (e.case === 'data') {
          if (!p) throw new ConnectError('the stream must start with the process (a start event)', Code.InvalidArgument);
          const i = e.value.input?.input;
          if (!i || i.case === undefined) throw new ConnectError('input is missing', Code.InvalidArgument);
          await input(p, Buffer.from(i.value), i.case === 'pty');
        }
      }
      return {};
    },

    async sendSignal(req, ctx) {
      const p = await processOf(sandboxOf(ctx), req.process);
      if (req.signal === Signal.SIGKILL) p.remote.signal('SIGKILL');
      else if (req.signal === Signal.SIGTERM) p.remote.signal('SIGTERM');
      else throw new ConnectError('signal must be SIGTERM or SIGKILL', Code.InvalidArgument);
      return {};
    },

    async update(req, ctx) {
      const p = await processOf(sandboxOf(ctx), req.process);
      const size = req.pty?.size;
      if (size) {
        if (!p.pty) throw new ConnectError('this process has no PTY', Code.FailedPrecondition);
        if (!validSize(size.cols, size.rows)) throw new ConnectError('PTY size must be 1..1000 columns and rows', Code.InvalidArgument);
        p.remote.resize(size.cols, size.rows);
      }
      return {};
    },

    async closeStdin(req, ctx) {
      const p = await processOf(sandboxOf(ctx), req.process);
      if (p.pty) throw new ConnectError('a PTY has no stdin to close: send Ctrl-D (0x04)', Code.FailedPrecondition);
      if (p.stdinOpen) {
        p.stdinOpen = false;
        p.remote.endStdin();
      }
      return {};
    },
  };
}

function validSize(cols: number, rows: number): boolean {
  return Number.isInteger(cols) && Number.isInteger(rows) && cols >= 1 && rows >= 1 && cols <= 1000 && rows <= 1000;
}

/** A Start request as core.exec's spec, validated (sizes, names, absolute cwd, known user). */
export async function execSpecOf(req: StartRequest, ctx: HandlerContext, sandbox: EnvdSandbox, bash: BashProbe, root: RootProbe): Promise<ExecSpec> {
  const config = req.process;
  if (!config || config.cmd === '') throw new ConnectError('process.cmd is missing', Code.InvalidArgument);
  const argBytes = config.args.reduce((n, a) => n + Buffer.byteLength(a), Buffer.byteLength(config.cmd));
  if (config.args.length > PROCESS_LIMITS.maxArgs || argBytes > PROCESS_LIMITS.maxArgBytes) throw new ConnectError('the command line is too long', Code.InvalidArgument);
  if ([config.cmd, ...config.args].some((a) => a.includes('\0'))) throw new ConnectError('the command line contains a NUL byte', Code.InvalidArgument);
  const names = Object.keys(config.envs);
  const envBytes = names.reduce((n, k) => n + Buffer.byteLength(k) + Buffer.byteLength(config.envs[k]!), 0);
  if (names.length > PROCESS_LIMITS.maxEnvs || envBytes > PROCESS_LIMITS.maxEnvBytes) throw new ConnectError('too many or too large envs', Code.InvalidArgument);
  for (const k of names) {
    if (!ENV_NAME.test(k)) throw new ConnectError(`invalid environment variable name "${k.slice(0, 64)}"`, Code.InvalidArgument);
    if (config.envs[k]!.includes('\0')) throw new ConnectError(`environment variable ${k} contains a NUL byte`, Code.InvalidArgument);
  }
  if (config.cwd !== undefined && config.cwd !== '') {
    const checked = containerPathComponents(config.cwd);
    if ('problem' in checked) throw new ConnectError(`cwd: ${checked.problem}`, Code.InvalidArgument);
  }
  if (req.tag !== undefined && (req.tag.length === 0 || req.tag.length > PROCESS_LIMITS.maxTagLength)) throw new ConnectError(`tag must be 1..${PROCESS_LIMITS.maxTagLength} characters`, Code.InvalidArgument);
  const size = req.pty?.size;
  if (req.pty !== undefined && (!size || !validSize(size.cols, size.rows))) throw new ConnectError('PTY size must be 1..1000 columns and rows', Code.InvalidArgument);
  const user = userOfAuthorization(ctx.requestHeader.get('authorization') ?? undefined);
  if (typeof user === 'object') throw new ConnectError(user.problem, Code.InvalidArgument);
  const wanted = user ?? (sandbox.facts.defaultUser === 'root' ? 'root' : undefined);
  // root, where the container's own user is root already, is that user (the direct path).
  const runAs = wanted === 'root' && await root.isRoot(sandbox.vm.id) ? undefined : execUser(wanted);
  let argv = commandArgv(config.cmd, config.args, await bash.has(sandbox.vm.id));
  const cwd = config.cwd !== undefined && config.cwd !== '' ? config.cwd : undefined;
  // The sandbox's envVars (given at create) under the process's own, as E2B's envd applies them.
  const spec: ExecSpec = { argv, env: { ...sandbox.facts.envVars, ...config.envs }, vm: false, stdin: req.stdin === true || req.pty !== undefined };
  if (size) spec.tty = { cols: size.cols, rows: size.rows };
  // The core enters the container directly (crun exec: signals reach the process itself), with
  // the user and working directory resolved in the container (podman exec only as a fallback).
  if (runAs !== undefined) {
    spec.user = runAs;
    if (cwd !== undefined) spec.cwd = cwd;
  } else {
    if (cwd !== undefined) argv = withCwd(argv, cwd);
    spec.argv = argv;
  }
  return spec;
}

export type { ProcessEvent };
