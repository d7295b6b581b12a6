/**
 * The API's one door to shoal's core: every route and MCP tool goes through this interface,
 * and ShoalCore implements it with the same functions (and, for `create`, the same command)
 * that the CLI uses. So a VM made by the CLI is seen here and the reverse, and unit tests can
 * hand the server a fake core that needs no VM.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { SupervisorClient } from '../control/client';
import type { FilesControlRequest } from '../control/messages';
import { killVm } from '../lifecycle/stop';
import { MAIN_CONTAINER, podmanEnvArgs } from '../container/podman-argv';
import { entriesOf, entryOf, filesCall, readFromChannel, writeToChannel } from '../host/files-client';
import type { FileEntry } from '../protocol/files';
import { STDERR, STDIN, STDOUT, type Channel } from '../protocol/mux';
import { startClone, waitUntilRunning } from '../snapshot/clone';
import { createSnapshot } from '../snapshot/create';
import { findSnapshot, listSnapshots, removeSnapshot } from '../snapshot/store';
import { StateStore, statusOf } from '../state/store';
import type { VmRecord } from '../state/vm-record';
import { vmFiles } from '../state/vm-files';
import { ShoalError } from '../util/errors';
import { projectRoot } from '../util/paths';
import { ApiError, firstLine } from './errors';

export interface SandboxSpec {
  name: string;
  image?: string;
  snapshot?: string;
  cpus: number;
  memoryMiB: number;
  env: Record<string, string>;
  /** The container's command; the API supplies an idle one when the user gave none. */
  cmd: string[];
  network: string;
  publish: string[];
}

export interface VmView {
  id: string;
  name: string;
  /** What the VM is now (running, stopped, dead, ...). */
  status: string;
  image: string;
  cpus: number;
  memoryMiB: number;
  createdAt: string;
}

export interface ExecSpec {
  argv: string[];
  env: Record<string, string>;
  cwd?: string;
  user?: string;
  /** In the guest OS instead of the container. */
  vm: boolean;
  /** Attach stdin (else it is /dev/null). */
  stdin: boolean;
  /** Run on a terminal of this size (output on stdout only). */
  tty?: { cols: number; rows: number };
  /**
   * envd (issue 25): enter the container through the supervisor's direct exec (crun exec, signals
   * to the container process itself) rather than `podman exec`, whose signals stop at podman, so a
   * killed process really ends. Only without cwd and user (the direct path runs the container's own).
   */
  direct?: boolean;
}

export type ProcessEnd = { exitCode: number | null; signal: string | null } | { error: string };

/** A process in a sandbox, as the API sees it: output with flow control, input, signals, its end. */
export interface RemoteProcess {
  /** The handler's promise holds back the sender (the guest), so output never piles up here. */
  onOutput(handler: (stream: 'stdout' | 'stderr', data: Buffer) => void | Promise<void>): void;
  /** Settles once, with the exit or why it could not run (or the link was lost). */
  readonly done: Promise<ProcessEnd>;
  writeStdin(data: Buffer): Promise<void>;
  endStdin(): void;
  signal(name: string): void;
  resize(cols: number, rows: number): void;
  /** Drops the link: the guest kills a process whose channel closed. */
  close(): void;
}

export type { LogRecord } from './log-reader';

export interface SnapshotView {
  tag: string;
  parent: string;
  createdAt: string;
  image: string;
}

export interface FileOps {
  read(id: string, path: string, maxBytes: number): Promise<{ entry: FileEntry; body: Readable }>;
  write(id: string, path: string, body: AsyncIterable<Buffer | string>, maxBytes: number): Promise<FileEntry>;
  list(id: string, path: string): Promise<{ entries: FileEntry[]; truncated: boolean }>;
  stat(id: string, path: string): Promise<FileEntry>;
  mkdir(id: string, path: string): Promise<boolean>;
  rename(id: string, from: string, to: string): Promise<FileEntry>;
  remove(id: string, path: string): Promise<void>;
}

export interface Core {
  create(spec: SandboxSpec): Promise<VmView>;
  list(): VmView[];
  find(idOrName: string): VmView | undefined;
  /** Kills and removes the VM (as `shoal rm -f`). */
  remove(id: string): Promise<void>;
  exec(id: string, spec: ExecSpec): Promise<RemoteProcess>;
  /** The path of the sandbox's container log (read with log-reader.ts: its bytes are the guest's). */
  logFile(id: string): string;
  snapshot(id: string, tag: string): Promise<{ tag: string; pauseMs: number }>;
  snapshots(): SnapshotView[];
  removeSnapshot(tag: string, options?: { force?: boolean }): void;
  /** Snapshots the VM and starts `names.length` clones; one entry per child. */
  fork(id: string, names: string[]): Promise<Array<VmView | Error>>;
  readonly files: FileOps;
  /** A directory that lives exactly as long as the VM (the API keeps its own facts there). */
  vmDir(id: string): string;
}

export class ShoalCore implements Core {
  readonly files: FileOps;

  constructor(readonly store: StateStore = new StateStore()) {
    this.files = new AgentFiles(this);
  }

  vmDir(id: string): string {
    return this.store.vmDir(id);
  }

  list(): VmView[] {
    return this.store.list().map(viewOf);
  }

  find(idOrName: string): VmView | undefined {
    const record = this.store.find(idOrName);
    return record ? viewOf(record) : undefined;
  }

  /** `shoal run -d`, the same command a user types, so every rule of `run` applies. */
  async create(spec: SandboxSpec): Promise<VmView> {
    if (spec.snapshot !== undefined) return this.clone(spec.snapshot, spec.name);
    // The env goes over stdin (--env-stdin), never in the child's argv: /proc/PID/cmdline is
    // readable by every local user for the whole boot.
    const args = ['run', '-d', '--env-stdin', '--name', spec.name, '--cpus', String(spec.cpus), '--memory', String(spec.memoryMiB), '--network', spec.network];
    for (const p of spec.publish) args.push('-p', p);
    args.push(spec.image!, '--', ...spec.cmd);
    await runCli(this.store, args, JSON.stringify(spec.env));
    return viewOf(this.store.get(spec.name));
  }

  private async clone(tag: string, name: string): Promise<VmView> {
    const { dir, manifest } = findSnapshot(this.store, tag);
    const record = startClone(this.store, dir, manifest, { name, autoRemove: false, publish: [] });
    try {
      await waitUntilRunning(this.store, record);
    } catch (err) {
      await this.remove(record.id).catch(() => undefined);
      throw err;
    }
    return viewOf(this.store.read(record.id) ?? record);
  }

  async remove(id: string): Promise<void> {
    const record = this.record(id);
    await killVm(this.store, record);
    this.store.remove(record);
  }

  async exec(id: string, spec: ExecSpec): Promise<RemoteProcess> {
    const record = this.runningRecord(id);
    // ---- envd (issue 25): the direct container exec, see ExecSpec.direct.
    if (spec.direct === true && !spec.vm && spec.cwd === undefined && spec.user === undefined) {
      const client = await SupervisorClient.connect(this.store, record, 10_000);
      const channel = client.exec({ argv: spec.argv, env: spec.env, interactive: spec.stdin, vm: false, ...(spec.tty ? { tty: spec.tty } : {}) });
      return new ChannelProcess(channel, () => client.close());
    }
    // ---- end envd
    let argv = spec.argv;
    let env = spec.env;
    if (!spec.vm) {
      // podman exec built here (rather than by the supervisor) so cwd and user reach it too.
      argv = ['podman', 'exec'];
      if (spec.stdin) argv.push('--interactive');
      if (spec.tty) argv.push('--tty');
      if (spec.cwd !== undefined) argv.push('--workdir', spec.cwd);
      if (spec.user !== undefined) argv.push('--user', spec.user);
      // Bare --env KEY with the value in podman's environment: no value in any argv.
      const podmanEnv = podmanEnvArgs(spec.env);
      argv.push(...podmanEnv.args);
      argv.push(MAIN_CONTAINER, ...spec.argv);
      env = podmanEnv.processEnv;
    } else if (spec.cwd !== undefined) {
      argv = ['env', '-C', spec.cwd, '--', ...spec.argv];
    }
    const client = await SupervisorClient.connect(this.store, record, 10_000);
    const channel = client.exec({ argv, env, interactive: spec.stdin, vm: true, ...(spec.tty ? { tty: spec.tty } : {}) });
    return new ChannelProcess(channel, () => client.close());
  }

  logFile(id: string): string {
    return vmFiles(this.store.vmDir(this.record(id).id)).containerLog;
  }

  async snapshot(id: string, tag: string): Promise<{ tag: string; pauseMs: number }> {
    const { manifest } = await createSnapshot(this.store, this.record(id), tag);
    return { tag, pauseMs: manifest.timings.pausedMs };
  }

  snapshots(): SnapshotView[] {
    return listSnapshots(this.store).map(({ tag, manifest }) => ({ tag, parent: manifest.source.id, createdAt: manifest.createdAt, image: manifest.config.image }));
  }

  /** force (the E2B API): also when live clones map its memory (their mappings keep it until they end). */
  removeSnapshot(tag: string, options: { force?: boolean } = {}): void {
    findSnapshot(this.store, tag);
    removeSnapshot(this.store, tag, options);
  }

  /** As `shoal fork`, except that one child failing does not take its siblings down. */
  async fork(id: string, names: string[]): Promise<Array<VmView | Error>> {
    const source = this.runningRecord(id);
    const snapshot = await createSnapshot(this.store, source, `fork-${source.config.name}`, { hidden: true });
    try {
      const started = names.map((name) => {
        try {
          return startClone(this.store, snapshot.dir, snapshot.manifest, { name, autoRemove: false, publish: [] });
        } catch (err) {
          return err as Error;
        }
      });
      return await Promise.all(started.map(async (child) => {
        if (child instanceof Error) return child;
        try {
          await waitUntilRunning(this.store, child);
          return viewOf(this.store.read(child.id) ?? child);
        } catch (err) {
          const record = this.store.read(child.id);
          if (record) {
            await killVm(this.store, record).catch(() => undefined);
            this.store.remove(record);
          }
          return err as Error;
        }
      }));
    } finally {
      fs.rmSync(snapshot.dir, { recursive: true, force: true });
    }
  }

  record(id: string): VmRecord {
    const record = this.store.find(id);
    if (!record) throw new ApiError('not_found', `no such sandbox: ${id}`);
    return record;
  }

  runningRecord(id: string): VmRecord {
    const record = this.record(id);
    const status = statusOf(record);
    if (status !== 'running') throw new ApiError('conflict', `sandbox ${record.id} is ${status}, not running`);
    return record;
  }

  /** A files channel on the VM's supervisor; the connection ends with the channel. */
  async filesChannel(id: string, request: Omit<FilesControlRequest, 'kind'>): Promise<Channel> {
    const client = await SupervisorClient.connect(this.store, this.runningRecord(id), 10_000);
    const channel = client.files(request);
    channel.on('close', () => client.close());
    return channel;
  }
}

class AgentFiles implements FileOps {
  constructor(private readonly core: ShoalCore) {}

  private open(id: string, request: Omit<FilesControlRequest, 'kind'>): Promise<Channel> {
    return this.core.filesChannel(id, request);
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
}

/** An exec channel (relayed by the supervisor to the agent) as a RemoteProcess. */
class ChannelProcess implements RemoteProcess {
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
        resolve(end ?? { error: 'the connection to the VM was lost' });
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

function viewOf(record: VmRecord): VmView {
  return {
    id: record.id,
    name: record.config.name,
    status: statusOf(record),
    image: record.config.image,
    cpus: record.config.cpus,
    memoryMiB: record.config.memoryMiB,
    createdAt: record.createdAt,
  };
}

/** Runs the shoal CLI itself; its one-line error becomes a ShoalError. */
function runCli(store: StateStore, args: string[], stdin: string, timeoutMs = 300_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(projectRoot(), 'dist', 'src', 'cli', 'main.js'), ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, SHOAL_STATE_DIR: store.root, SHOAL_PROGRESS: '0' },
    });
    child.stdin.on('error', () => undefined); // a child that failed before reading it
    child.stdin.end(stdin);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let size = 0;
    const keep = (chunks: Buffer[]) => (d: Buffer): void => {
      size += d.length;
      if (size < 1024 * 1024) chunks.push(d);
    };
    child.stdout.on('data', keep(out));
    child.stderr.on('data', keep(err));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) {
        resolve(Buffer.concat(out).toString());
        return;
      }
      const lines = Buffer.concat(err).toString().trim().split('\n');
      const line = lines.reverse().find((l) => l.startsWith('shoal: ')) ?? lines[0] ?? `shoal ${args[0]} failed`;
      reject(new ShoalError(line.replace(/^shoal: /, '')));
    });
  });
}
