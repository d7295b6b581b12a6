/**
 * Running a process in a VM, for every front end: the request `shoal exec` sends, on the VM's
 * supervisor's control socket. In the container the supervisor has the agent enter it directly
 * (`crun exec` with the container's own process settings, src/agent/container-exec.ts), with
 * the user and working directory asked for, so signals reach the process itself; podman exec
 * is only the fallback. The env travels in the request on the socket, never in an argv.
 */
import { SupervisorClient } from '../control/client';
import type { ExecControlRequest } from '../control/messages';
import { parseUser, parseWorkdir } from '../container/container-options';
import { STDERR, STDIN, STDOUT, type Channel } from '../protocol/mux';
import type { StateStore } from '../state/store';
import type { VmRecord } from '../state/vm-record';
import { ShoalError } from '../util/errors';
import { MAX_KEPT_TAG_BYTES, validKeptTag, type KeptProcessInfo } from '../protocol/kept';
import { validating } from './errors';
import type { ExecSpec, ProcessEnd, RemoteProcess } from './types';

/** Checks the spec and builds the control request (exported for the tests). */
export function execRequest(spec: ExecSpec): Omit<ExecControlRequest, 'kind'> {
  if (!Array.isArray(spec.argv) || spec.argv.length === 0) throw new ShoalError('exec needs a command to run');
  const request: Omit<ExecControlRequest, 'kind'> = { argv: spec.argv, env: spec.env, interactive: spec.stdin, vm: spec.vm };
  if (spec.tty) request.tty = spec.tty;
  if (spec.keep !== undefined) {
    if (!validKeptTag(spec.keep)) throw new ShoalError(`keep: a tag of at most ${MAX_KEPT_TAG_BYTES} bytes`);
    request.keep = { tag: spec.keep };
  }
  const cwd = spec.cwd === undefined ? undefined : parseWorkdir(spec.cwd, 'cwd');
  if (spec.vm) {
    if (spec.user !== undefined) throw new ShoalError('user is for the container, not the VM');
    // The guest OS has no working-directory field: env(1) changes it before the command runs.
    if (cwd !== undefined) request.argv = ['env', '-C', cwd, '--', ...spec.argv];
    return request;
  }
  if (spec.user !== undefined) request.user = parseUser(spec.user, 'user');
  if (cwd !== undefined) request.workdir = cwd;
  return request;
}

/** Starts the process; the returned RemoteProcess owns the connection to the supervisor. */
export async function execVm(store: StateStore, record: VmRecord, spec: ExecSpec): Promise<RemoteProcess> {
  const request = validating(() => execRequest(spec));
  const client = await SupervisorClient.connect(store, record, 10_000);
  return new ChannelProcess(client.exec(request), () => client.close());
}

/** The agent's kept processes (src/protocol/kept.ts), parsed and bounded by the control client. */
export async function keptProcesses(store: StateStore, record: VmRecord): Promise<KeptProcessInfo[]> {
  const client = await SupervisorClient.connect(store, record, 10_000);
  try {
    return await client.keptList();
  } finally {
    client.close();
  }
}

/** Follows a kept process: its recent output replayed, then live; input, signals, its end as an exec's. */
export async function attachKept(store: StateStore, record: VmRecord, id: number): Promise<RemoteProcess> {
  const client = await SupervisorClient.connect(store, record, 10_000);
  return new ChannelProcess(client.attachKept(id), () => client.close());
}

/** An exec channel (relayed by the supervisor to the agent) as a RemoteProcess. */
export class ChannelProcess implements RemoteProcess {
  readonly done: Promise<ProcessEnd>;

  constructor(private readonly channel: Channel, onClose: () => void) {
    this.done = new Promise<ProcessEnd>((resolve) => {
      let end: ProcessEnd | undefined;
      channel.on('message', (message: Record<string, unknown>) => {
        if (message.type === 'exit') {
          end = { exitCode: typeof message.code === 'number' ? message.code : null, signal: typeof message.signal === 'string' ? message.signal.slice(0, 32) : null };
        } else if (message.type === 'error') end = { error: firstLine(String(message.message)) };
      });
      channel.on('close', () => {
        channel.close();
        onClose();
        resolve(end ?? { error: 'the connection to the VM was lost', lost: true });
      });
    });
    channel.setDataHandler(() => undefined);
  }

  onOutput(handler: (stream: 'stdout' | 'stderr', data: Buffer) => void | Promise<void>): void {
    this.channel.setDataHandler((stream, data) => {
      if (stream === STDOUT) return handler('stdout', data);
      if (stream === STDERR) return handler('stderr', data);
      return undefined;
    });
  }

  writeStdin(data: Buffer): Promise<void> {
    return this.channel.write(STDIN, data);
  }

  endStdin(): void {
    this.channel.end(STDIN);
  }

  signal(name: string): void {
    this.channel.send({ type: 'signal', signal: name });
  }

  resize(cols: number, rows: number): void {
    this.channel.send({ type: 'resize', cols, rows });
  }

  close(): void {
    this.channel.close();
  }
}

function firstLine(text: string): string {
  return text.split('\n')[0]!.slice(0, 1000);
}
