/**
 * @shoal/sdk: a client for `shoal serve`, with the names sandbox users know from E2B:
 *
 *   const shoal = new Shoal({ socketPath: '/run/shoal/api.sock', token }); // or baseUrl: 'http://127.0.0.1:7070'
 *   const sbx = await shoal.sandboxes.create({ image: 'docker.io/library/python:3.12-slim' });
 *   const result = await sbx.commands.run('python3 -c "print(6*7)"');
 *   await sbx.files.write('/work/a.txt', 'hello');
 *   const children = await sbx.fork({ count: 3 });
 *   await sbx.kill();
 *
 * The request and reply types come from the server's OpenAPI document (openapi.ts, generated),
 * so the client and the server cannot drift apart silently.
 */
import WebSocket from 'ws';
import { unixFetch } from './unix';
import type { components } from './openapi';
import { readSse } from './sse';

export type SandboxInfo = components['schemas']['Sandbox'];
export type EntryInfo = components['schemas']['FileEntry'];
export type ProcessInfo = components['schemas']['ProcessInfo'];
export type SnapshotInfo = components['schemas']['SnapshotInfo'];
type CreateBody = components['schemas']['CreateSandbox'];
type ExecBody = components['schemas']['Exec'];
type ExecReply = components['schemas']['ExecResult'];

export interface ShoalOptions {
  /** e.g. http://127.0.0.1:7070 (a server started with --listen); give this or socketPath. */
  baseUrl?: string;
  /** The server's Unix socket, e.g. /run/shoal/api.sock (the default of `shoal serve` as root). */
  socketPath?: string;
  token: string;
  /** Per-request timeout for calls that are not streams (ms); default 10 minutes (a VM boot under TCG is slow). */
  requestTimeoutMs?: number;
}

/** An error reply of the API: its HTTP status, its code and its one-line message. */
export class ShoalApiError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
    this.name = 'ShoalApiError';
  }
}

/** A command that ended with a non-zero exit code (as E2B's CommandExitError). */
export class CommandExitError extends Error {
  constructor(readonly result: CommandResult) {
    super(`command exited with code ${result.exitCode}${result.error ? `: ${result.error}` : ''}`);
    this.name = 'CommandExitError';
  }

  get exitCode(): number {
    return this.result.exitCode;
  }

  get stdout(): string {
    return this.result.stdout;
  }

  get stderr(): string {
    return this.result.stderr;
  }
}

export interface CommandResult {
  pid: number;
  exitCode: number;
  signal: string | null;
  stdout: string;
  stderr: string;
  error?: string;
}

export interface RunOptions {
  cwd?: string;
  envs?: Record<string, string>;
  user?: string;
  /** Kill the command after this long (rounded up to seconds). */
  timeoutMs?: number;
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
  /** Return a CommandHandle at once instead of waiting for the end. */
  background?: boolean;
  /** Keep stdin open for handle.sendStdin (else it is /dev/null). */
  stdin?: boolean;
  /** Run in the guest OS instead of the container. */
  vm?: boolean;
}

export interface CreateOptions {
  image?: string;
  snapshot?: string;
  name?: string;
  cpus?: number;
  memoryMiB?: number;
  envs?: Record<string, string>;
  cmd?: string[];
  timeoutMs?: number;
  metadata?: Record<string, string>;
  network?: CreateBody['network'];
  publish?: string[];
}

class Http {
  constructor(private readonly options: ShoalOptions) {
    if ((options.baseUrl === undefined) === (options.socketPath === undefined)) throw new TypeError('give exactly one of baseUrl and socketPath');
  }

  get baseUrl(): string {
    // Over a Unix socket the URL only carries the path.
    return (this.options.baseUrl ?? 'http://localhost').replace(/\/$/, '');
  }

  /** The WebSocket URL of a path (ws's ws+unix: form over a socket). */
  wsUrl(path: string): URL {
    if (this.options.socketPath !== undefined) return new URL(`ws+unix://${this.options.socketPath}:${path}`);
    const url = new URL(`${this.baseUrl}${path}`);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    return url;
  }

  get token(): string {
    return this.options.token;
  }

  async raw(method: string, path: string, init: { body?: NonNullable<RequestInit['body']>; headers?: Record<string, string>; signal?: AbortSignal; json?: unknown; stream?: boolean } = {}): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.options.token}`, ...init.headers };
    let body = init.body;
    if (init.json !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(init.json);
    }
    const signal = init.signal ?? (init.stream ? undefined : AbortSignal.timeout(this.options.requestTimeoutMs ?? 600_000));
    const request: RequestInit & { duplex?: 'half' } = { method, headers, ...(body !== undefined ? { body } : {}), ...(signal ? { signal } : {}) };
    if (body !== undefined && typeof body === 'object' && Symbol.asyncIterator in (body as object)) request.duplex = 'half';
    const response = this.options.socketPath !== undefined
      ? await unixFetch(this.options.socketPath, `${this.baseUrl}${path}`, request)
      : await fetch(`${this.baseUrl}${path}`, request);
    if (!response.ok) throw await apiError(response);
    return response;
  }

  async json<T>(method: string, path: string, json?: unknown): Promise<T> {
    const response = await this.raw(method, path, json === undefined ? {} : { json });
    if (response.status === 204) return undefined as T;
    return (await response.json()) as T;
  }
}

async function apiError(response: Response): Promise<ShoalApiError> {
  const text = await response.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { error?: { code?: string; message?: string } };
    if (body.error?.message) return new ShoalApiError(response.status, body.error.code ?? 'error', body.error.message);
  } catch {
    // not JSON
  }
  return new ShoalApiError(response.status, 'error', text.slice(0, 200) || response.statusText);
}

const enc = encodeURIComponent;

export class Shoal {
  private readonly http: Http;
  readonly sandboxes: {
    create: (options: CreateOptions) => Promise<Sandbox>;
    get: (sandboxId: string) => Promise<Sandbox>;
    list: (options?: { metadata?: Record<string, string> }) => Promise<SandboxInfo[]>;
  };
  readonly snapshots: {
    list: () => Promise<SnapshotInfo[]>;
    remove: (tag: string) => Promise<void>;
  };

  constructor(options: ShoalOptions) {
    this.http = new Http(options);
    const http = this.http;
    this.sandboxes = {
      create: async (o) => {
        const body: CreateBody = {};
        if (o.image !== undefined) body.image = o.image;
        if (o.snapshot !== undefined) body.snapshot = o.snapshot;
        if (o.name !== undefined) body.name = o.name;
        if (o.cpus !== undefined) body.cpus = o.cpus;
        if (o.memoryMiB !== undefined) body.memoryMiB = o.memoryMiB;
        if (o.envs !== undefined) body.env = o.envs;
        if (o.cmd !== undefined) body.cmd = o.cmd;
        if (o.timeoutMs !== undefined) body.timeoutSec = Math.max(1, Math.ceil(o.timeoutMs / 1000));
        if (o.metadata !== undefined) body.metadata = o.metadata;
        if (o.network !== undefined) body.network = o.network;
        if (o.publish !== undefined) body.publish = o.publish;
        return new Sandbox(http, await http.json<SandboxInfo>('POST', '/v1/sandboxes', body));
      },
      get: async (id) => new Sandbox(http, await http.json<SandboxInfo>('GET', `/v1/sandboxes/${enc(id)}`)),
      list: async (o) => {
        const query = Object.entries(o?.metadata ?? {}).map(([k, v]) => `metadata.${enc(k)}=${enc(v)}`).join('&');
        return http.json<SandboxInfo[]>('GET', `/v1/sandboxes${query ? `?${query}` : ''}`);
      },
    };
    this.snapshots = {
      list: () => http.json<SnapshotInfo[]>('GET', '/v1/snapshots'),
      remove: (tag) => http.json<void>('DELETE', `/v1/snapshots/${enc(tag)}`),
    };
  }
}

export class Sandbox {
  readonly commands: Commands;
  readonly files: Files;
  readonly pty: Pty;

  constructor(private readonly http: Http, public info: SandboxInfo) {
    this.commands = new Commands(http, info.sandboxId);
    this.files = new Files(http, info.sandboxId);
    this.pty = new Pty(http, info.sandboxId);
  }

  get sandboxId(): string {
    return this.info.sandboxId;
  }

  private get path(): string {
    return `/v1/sandboxes/${enc(this.info.sandboxId)}`;
  }

  async getInfo(): Promise<SandboxInfo> {
    this.info = await this.http.json<SandboxInfo>('GET', this.path);
    return this.info;
  }

  async isRunning(): Promise<boolean> {
    try {
      return (await this.getInfo()).state === 'running';
    } catch (err) {
      if (err instanceof ShoalApiError && err.status === 404) return false;
      throw err;
    }
  }

  /** The sandbox is removed this long from now. */
  async setTimeout(timeoutMs: number): Promise<void> {
    this.info = await this.http.json<SandboxInfo>('POST', `${this.path}/timeout`, { timeoutSec: Math.max(1, Math.ceil(timeoutMs / 1000)) });
  }

  async kill(): Promise<void> {
    await this.http.json<void>('DELETE', this.path);
  }

  /** Pauses it: memory and disk kept in a snapshot, no VM meanwhile; `info.state` becomes 'paused'. */
  async pause(): Promise<void> {
    this.info = await this.http.json<SandboxInfo>('POST', `${this.path}/pause`);
  }

  /**
   * Resumes it from its pause, processes and files as they were. The VM is a new one: use the
   * Sandbox this returns (same name, a new sandboxId).
   */
  async resume(options: { timeoutMs?: number } = {}): Promise<Sandbox> {
    const body: { timeoutSec?: number } = {};
    if (options.timeoutMs !== undefined) body.timeoutSec = Math.max(1, Math.ceil(options.timeoutMs / 1000));
    return new Sandbox(this.http, await this.http.json<SandboxInfo>('POST', `/v1/sandboxes/${enc(this.info.name)}/resume`, body));
  }

  async snapshot(tag: string): Promise<{ tag: string; parent: string; pauseMs: number }> {
    return this.http.json('POST', `${this.path}/snapshots`, { tag });
  }

  /** Snapshots this sandbox and starts `count` clones of it: one Sandbox or Error per child. */
  async fork(options: { count: number; timeoutMs?: number; metadata?: Record<string, string> }): Promise<Array<Sandbox | Error>> {
    const body: components['schemas']['Fork'] = { count: options.count };
    if (options.timeoutMs !== undefined) body.timeoutSec = Math.max(1, Math.ceil(options.timeoutMs / 1000));
    if (options.metadata !== undefined) body.metadata = options.metadata;
    const entries = await this.http.json<Array<components['schemas']['ForkEntry']>>('POST', `${this.path}/fork`, body);
    return entries.map((e) => ('sandbox' in e ? new Sandbox(this.http, e.sandbox as SandboxInfo) : new ShoalApiError(409, e.error.code, e.error.message)));
  }

  /** The main container's output so far. */
  async logs(): Promise<Array<{ stream: string; data: string }>> {
    return (await this.http.json<{ logs: Array<{ stream: string; data: string }> }>('GET', `${this.path}/logs`)).logs;
  }
}

export class Commands {
  constructor(private readonly http: Http, private readonly sandboxId: string) {}

  private get path(): string {
    return `/v1/sandboxes/${enc(this.sandboxId)}`;
  }

  /** Runs a command: waits for its end (throws CommandExitError on a non-zero exit), or with background returns a handle. */
  run(cmd: string | string[], options: RunOptions & { background: true }): Promise<CommandHandle>;
  run(cmd: string | string[], options?: RunOptions & { background?: false }): Promise<CommandResult>;
  async run(cmd: string | string[], options: RunOptions = {}): Promise<CommandResult | CommandHandle> {
    const body: ExecBody = { cmd };
    if (options.cwd !== undefined) body.cwd = options.cwd;
    if (options.envs !== undefined) body.env = options.envs;
    if (options.user !== undefined) body.user = options.user;
    if (options.timeoutMs !== undefined) body.timeoutSec = Math.max(1, Math.ceil(options.timeoutMs / 1000));
    if (options.stdin !== undefined) body.stdin = options.stdin;
    if (options.vm !== undefined) body.vm = options.vm;
    if (!options.background && !options.onStdout && !options.onStderr) {
      const r = await this.http.json<ExecReply>('POST', `${this.path}/exec`, body);
      const result: CommandResult = { pid: r.pid, exitCode: r.exitCode ?? -1, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
      if (r.exitCode !== 0) throw new CommandExitError(result);
      return result;
    }
    const controller = new AbortController();
    const response = await this.http.raw('POST', `${this.path}/exec`, { json: body, headers: { accept: 'text/event-stream' }, signal: controller.signal, stream: true });
    const handle = new CommandHandle(this.http, this.sandboxId, options, response, controller);
    await handle.started;
    return options.background ? handle : handle.wait();
  }

  /** Follows a running (or recently ended) command again, e.g. after its stream was dropped. */
  async connect(pid: number, options: { onStdout?: (data: string) => void; onStderr?: (data: string) => void; lastEventId?: number } = {}): Promise<CommandHandle> {
    const handle = new CommandHandle(this.http, this.sandboxId, options, undefined, new AbortController(), pid, options.lastEventId ?? 0);
    return handle;
  }

  async list(): Promise<ProcessInfo[]> {
    return this.http.json<ProcessInfo[]>('GET', `${this.path}/processes`);
  }

  async sendStdin(pid: number, data: string | Uint8Array, options: { eof?: boolean } = {}): Promise<void> {
    await this.http.raw('POST', `${this.path}/processes/${pid}/stdin${options.eof ? '?eof=1' : ''}`, { body: typeof data === 'string' ? data : Buffer.from(data), headers: { 'content-type': 'application/octet-stream' } });
  }

  async kill(pid: number, signal = 'SIGKILL'): Promise<void> {
    await this.http.json<void>('POST', `${this.path}/processes/${pid}/signal`, { signal });
  }
}

/** A running command: its output as it comes, its end, input and signals. */
export class CommandHandle {
  pid = 0;
  stdout = '';
  stderr = '';
  /** The id of the last event seen: where a reconnect resumes. */
  lastEventId = 0;
  readonly started: Promise<void>;
  private readonly ended: Promise<CommandResult>;
  private markStarted!: () => void;
  private disconnected = false;

  constructor(
    private readonly http: Http,
    private readonly sandboxId: string,
    private readonly handlers: { onStdout?: (data: string) => void; onStderr?: (data: string) => void },
    first: Response | undefined,
    private controller: AbortController,
    pid?: number,
    from = 0,
  ) {
    this.started = new Promise((resolve) => { this.markStarted = resolve; });
    if (pid !== undefined) {
      this.pid = pid;
      this.lastEventId = from;
      this.markStarted();
    }
    this.ended = this.follow(first);
    this.ended.catch(() => undefined);
  }

  private async follow(first: Response | undefined): Promise<CommandResult> {
    let response = first;
    for (let attempt = 0; ; attempt++) {
      try {
        if (!response) {
          response = await this.http.raw('GET', `/v1/sandboxes/${enc(this.sandboxId)}/processes/${this.pid}/events`, { headers: { 'last-event-id': String(this.lastEventId) }, signal: this.controller.signal, stream: true });
        }
        for await (const event of readSse(response.body!)) {
          if (event.id !== undefined) this.lastEventId = Number(event.id);
          const data = JSON.parse(event.data) as Record<string, unknown>;
          if (event.event === 'start') {
            this.pid = Number(data.pid);
            this.markStarted();
          } else if (event.event === 'stdout') {
            this.stdout += String(data.data);
            this.handlers.onStdout?.(String(data.data));
          } else if (event.event === 'stderr') {
            this.stderr += String(data.data);
            this.handlers.onStderr?.(String(data.data));
          } else if (event.event === 'exit') {
            const signal = typeof data.signal === 'string' ? data.signal : null;
            return { pid: this.pid, exitCode: typeof data.exitCode === 'number' ? data.exitCode : -1, signal, stdout: this.stdout, stderr: this.stderr };
          } else if (event.event === 'error') {
            return { pid: this.pid, exitCode: -1, signal: null, stdout: this.stdout, stderr: this.stderr, error: String(data.message) };
          }
        }
        throw new Error('the stream ended before the command did');
      } catch (err) {
        if (this.disconnected) throw new Error('disconnected from the command (it keeps running; use commands.connect(pid))');
        if (err instanceof ShoalApiError || this.pid === 0 || attempt >= 5) throw err;
        response = undefined; // dropped: resume from lastEventId
        await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
      }
    }
  }

  /** Waits for the end; throws CommandExitError on a non-zero exit. */
  async wait(): Promise<CommandResult> {
    const result = await this.ended;
    if (result.exitCode !== 0) throw new CommandExitError(result);
    return result;
  }

  /** Stops following the output; the command keeps running. */
  disconnect(): void {
    this.disconnected = true;
    this.controller.abort();
  }

  async sendStdin(data: string | Uint8Array, options: { eof?: boolean } = {}): Promise<void> {
    await new Commands(this.http, this.sandboxId).sendStdin(this.pid, data, options);
  }

  async kill(signal = 'SIGKILL'): Promise<void> {
    await new Commands(this.http, this.sandboxId).kill(this.pid, signal);
  }
}

export class Files {
  constructor(private readonly http: Http, private readonly sandboxId: string) {}

  private url(route: string, path: string): string {
    return `/v1/sandboxes/${enc(this.sandboxId)}/${route}?path=${enc(path)}`;
  }

  read(path: string, options?: { format?: 'text' }): Promise<string>;
  read(path: string, options: { format: 'bytes' }): Promise<Uint8Array>;
  async read(path: string, options: { format?: 'text' | 'bytes' } = {}): Promise<string | Uint8Array> {
    const response = await this.http.raw('GET', this.url('files', path));
    const bytes = new Uint8Array(await response.arrayBuffer());
    return options.format === 'bytes' ? bytes : new TextDecoder().decode(bytes);
  }

  /** Writes a file (parent directories are created); large bodies are streamed. */
  async write(path: string, data: string | Uint8Array | ArrayBuffer | AsyncIterable<Uint8Array>): Promise<EntryInfo> {
    const body: NonNullable<RequestInit['body']> = typeof data === 'string' ? data : data instanceof ArrayBuffer ? new Uint8Array(data) : data instanceof Uint8Array ? data : (toStream(data) as unknown as NonNullable<RequestInit['body']>);
    const response = await this.http.raw('PUT', this.url('files', path), { body, headers: { 'content-type': 'application/octet-stream' } });
    return (await response.json()) as EntryInfo;
  }

  async list(path: string): Promise<EntryInfo[]> {
    return (await this.http.json<{ entries: EntryInfo[] }>('GET', this.url('fs/list', path))).entries;
  }

  async getInfo(path: string): Promise<EntryInfo> {
    return this.http.json<EntryInfo>('GET', this.url('fs/stat', path));
  }

  async exists(path: string): Promise<boolean> {
    try {
      await this.getInfo(path);
      return true;
    } catch (err) {
      if (err instanceof ShoalApiError && err.status === 404) return false;
      throw err;
    }
  }

  async remove(path: string): Promise<void> {
    await this.http.json<void>('DELETE', this.url('files', path));
  }

  /** Makes a directory and its parents; false when it existed. */
  async makeDir(path: string): Promise<boolean> {
    return (await this.http.json<{ created: boolean }>('POST', `/v1/sandboxes/${enc(this.sandboxId)}/fs/mkdir`, { path })).created;
  }

  async rename(oldPath: string, newPath: string): Promise<EntryInfo> {
    return this.http.json<EntryInfo>('POST', `/v1/sandboxes/${enc(this.sandboxId)}/fs/rename`, { from: oldPath, to: newPath });
  }
}

function toStream(source: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> {
  const iterator = source[Symbol.asyncIterator]();
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      const { value, done } = await iterator.next();
      if (done) controller.close();
      else controller.enqueue(value);
    },
  });
}

export interface PtyOptions {
  cols: number;
  rows: number;
  onData: (data: Uint8Array) => void;
  /** The command on the terminal (default /bin/sh). */
  cmd?: string;
}

export class Pty {
  constructor(private readonly http: Http, private readonly sandboxId: string) {}

  /** Opens a terminal in the sandbox; resolves once it is connected. */
  async create(options: PtyOptions): Promise<PtyHandle> {
    const query = new URLSearchParams({ cols: String(options.cols), rows: String(options.rows), ...(options.cmd ? { cmd: options.cmd } : {}) });
    const url = this.http.wsUrl(`/v1/sandboxes/${enc(this.sandboxId)}/pty?${query.toString()}`);
    const socket = new WebSocket(url, { headers: { authorization: `Bearer ${this.http.token}` }, maxPayload: 4 * 1024 * 1024 });
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('error', reject);
      socket.once('unexpected-response', (_req, res) => reject(new ShoalApiError(res.statusCode ?? 0, 'error', `the PTY was refused (HTTP ${res.statusCode})`)));
    });
    return new PtyHandle(socket, options.onData);
  }
}

export class PtyHandle {
  private readonly ended: Promise<{ exitCode: number | null }>;

  constructor(private readonly socket: WebSocket, onData: (data: Uint8Array) => void) {
    socket.on('message', (data: Buffer, isBinary: boolean) => {
      if (isBinary) onData(new Uint8Array(data));
    });
    this.ended = new Promise((resolve) => {
      socket.on('close', (_code: number, reason: Buffer) => {
        try {
          const parsed = JSON.parse(reason.toString()) as { exitCode?: number | null };
          resolve({ exitCode: typeof parsed.exitCode === 'number' ? parsed.exitCode : null });
        } catch {
          resolve({ exitCode: null });
        }
      });
    });
  }

  sendInput(data: string | Uint8Array): void {
    this.socket.send(typeof data === 'string' ? Buffer.from(data) : data, { binary: true });
  }

  resize(size: { cols: number; rows: number }): void {
    this.socket.send(JSON.stringify({ type: 'resize', cols: size.cols, rows: size.rows }));
  }

  wait(): Promise<{ exitCode: number | null }> {
    return this.ended;
  }

  /** Closes the terminal (its process is killed). */
  kill(): void {
    this.socket.close(1000);
  }
}
