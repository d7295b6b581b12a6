/**
 * A Core for the API's unit tests that needs no VM: "sandboxes" are records in memory, their
 * processes are real local processes (so streaming, stdin, signals and exits are real), and
 * their files live under a temp directory per sandbox. What it cannot fake (snapshots, fork) it
 * records, so tests can check that a refused request changed nothing.
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { Core, ExecSpec, FileOps, KeptProcessInfo, LogRecord, OnProgress, ProcessEnd, RemoteProcess, SandboxSpec, SnapshotView, VmView } from '../../src/api/core';
import { ApiError } from '../../src/api/errors';
import { tempDir } from './temp-dir';
import type { FileEntry } from '../../src/protocol/files';
import { DirectoryWatch } from '../../src/agent/watch';
import { FilesError } from '../../src/host/files-client';
import type { WatchHandle, WatchHandlers } from '../../src/host/watch-client';

export class FakeCore implements Core {
  readonly root = tempDir('shoal-fake-core-');
  readonly vms = new Map<string, VmView>();
  readonly snaps: SnapshotView[] = [];
  readonly calls: string[] = [];
  readonly files: FileOps;
  /** How long exec takes to start a process (a real one connects to a supervisor first). */
  execDelayMs = 0;
  /** Watches refused as an older agent refuses them (the envd watcher then polls). */
  watchUnsupported = false;

  constructor() {
    this.files = new LocalFiles(this);
  }

  vmDir(id: string): string {
    const dir = path.join(this.root, 'vms', id);
    return dir;
  }

  recordsDir(name: string): string {
    return path.join(this.root, name);
  }

  fsRoot(id: string): string {
    return path.join(this.vmDir(id), 'rootfs');
  }

  async create(spec: SandboxSpec, onProgress?: OnProgress): Promise<VmView> {
    this.calls.push(`create ${spec.name}`);
    // What the real core reports while a VM boots (the supervisor's own lines).
    onProgress?.({ stage: 'create', message: 'using a fake VMM' });
    onProgress?.({ stage: 'create', message: 'starting the container' });
    const vm: VmView = { id: crypto.randomBytes(6).toString('hex'), name: spec.name, status: 'running', image: spec.image ?? `snapshot:${spec.snapshot}`, cpus: spec.cpus, memoryMiB: spec.memoryMiB, createdAt: new Date().toISOString() };
    fs.mkdirSync(this.fsRoot(vm.id), { recursive: true });
    this.vms.set(vm.id, vm);
    return vm;
  }

  list(): VmView[] {
    return [...this.vms.values()];
  }

  find(idOrName: string): VmView | undefined {
    return this.vms.get(idOrName) ?? this.list().find((v) => v.name === idOrName);
  }

  async remove(id: string): Promise<void> {
    this.calls.push(`remove ${id}`);
    this.vms.delete(id);
    fs.rmSync(this.vmDir(id), { recursive: true, force: true });
  }

  async exec(id: string, spec: ExecSpec): Promise<RemoteProcess> {
    this.calls.push(`exec ${id} ${spec.argv.join(' ')}`);
    if (this.execDelayMs > 0) await new Promise((r) => setTimeout(r, this.execDelayMs));
    return new LocalProcess(spec, this.fsRoot(id));
  }

  /** No guest agent here: nothing is kept beyond this process. */
  async keptProcesses(id: string): Promise<KeptProcessInfo[]> {
    void id;
    return [];
  }

  async attachKept(id: string, keptId: number): Promise<RemoteProcess> {
    throw new ApiError('not_found', `no kept process ${keptId} in ${id}`);
  }

  logFile(id: string): string {
    return path.join(this.vmDir(id), 'container.log');
  }

  /** Appends records to the sandbox's log as the supervisor's writer does. */
  writeLog(id: string, records: LogRecord[]): void {
    fs.mkdirSync(this.vmDir(id), { recursive: true });
    for (const r of records) {
      const header = Buffer.alloc(5);
      header.writeUInt8(r.stream === 'stderr' ? 2 : 1, 0);
      header.writeUInt32BE(r.data.length, 1);
      fs.appendFileSync(this.logFile(id), Buffer.concat([header, r.data]));
    }
  }

  async snapshot(id: string, tag: string): Promise<{ tag: string; pauseMs: number }> {
    this.calls.push(`snapshot ${id} ${tag}`);
    this.snaps.push({ tag, parent: id, createdAt: new Date().toISOString(), image: this.vms.get(id)!.image });
    return { tag, pauseMs: 1 };
  }

  snapshots(): SnapshotView[] {
    return [...this.snaps];
  }

  removeSnapshot(tag: string): void {
    this.calls.push(`removeSnapshot ${tag}`);
    this.snaps.splice(this.snaps.findIndex((s) => s.tag === tag), 1);
  }

  async fork(id: string, names: string[]): Promise<Array<VmView | Error>> {
    this.calls.push(`fork ${id} ${names.length}`);
    const source = this.vms.get(id)!;
    return Promise.all(names.map((name) => this.create({ name, image: source.image, cpus: 1, memoryMiB: 256, env: {}, cmd: [], network: 'none', publish: [] })));
  }
}

class LocalProcess implements RemoteProcess {
  readonly done: Promise<ProcessEnd>;
  private readonly child;

  constructor(spec: ExecSpec, cwd: string) {
    this.child = spawn(spec.argv[0]!, spec.argv.slice(1), { cwd, env: { PATH: process.env.PATH, ...spec.env }, stdio: [spec.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    this.child.stdin?.on('error', () => undefined);
    this.done = new Promise((resolve) => {
      this.child.on('error', (err) => resolve({ error: err.message }));
      this.child.on('close', (code, signal) => resolve({ exitCode: code, signal }));
    });
  }

  onOutput(handler: (stream: 'stdout' | 'stderr', data: Buffer) => void | Promise<void>): void {
    this.child.stdout!.on('data', (d: Buffer) => void handler('stdout', d));
    this.child.stderr!.on('data', (d: Buffer) => void handler('stderr', d));
  }

  async writeStdin(data: Buffer): Promise<void> {
    this.child.stdin?.write(data);
  }

  endStdin(): void {
    this.child.stdin?.end();
  }

  signal(name: string): void {
    this.child.kill(name as NodeJS.Signals);
  }

  resize(): void {}

  close(): void {
    this.child.kill('SIGKILL');
  }
}

/** Files under the fake sandbox's directory; container paths were validated by the server. */
class LocalFiles implements FileOps {
  constructor(private readonly core: FakeCore) {}

  private host(id: string, p: string): string {
    return path.join(this.core.fsRoot(id), p);
  }

  private entry(id: string, p: string): FileEntry {
    const st = fs.lstatSync(this.host(id, p));
    return { name: path.basename(p), path: p, type: st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other', size: st.size, mode: st.mode & 0o7777, mtime: st.mtime.toISOString() };
  }

  private exists(id: string, p: string): void {
    if (!fs.existsSync(this.host(id, p))) throw new ApiError('not_found', `${p}: no such file`);
  }

  async read(id: string, p: string): Promise<{ entry: FileEntry; body: Readable }> {
    this.exists(id, p);
    return { entry: this.entry(id, p), body: fs.createReadStream(this.host(id, p)) };
  }

  async write(id: string, p: string, body: AsyncIterable<Buffer | string>, maxBytes: number): Promise<FileEntry> {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of body) {
      size += c.length;
      if (size > maxBytes) throw new ApiError('payload_too_large', `the body is larger than ${maxBytes} bytes`);
      chunks.push(Buffer.from(c));
    }
    fs.mkdirSync(path.dirname(this.host(id, p)), { recursive: true });
    fs.writeFileSync(this.host(id, p), Buffer.concat(chunks));
    return this.entry(id, p);
  }

  async list(id: string, p: string): Promise<{ entries: FileEntry[]; truncated: boolean }> {
    this.exists(id, p);
    return { entries: fs.readdirSync(this.host(id, p)).map((n) => this.entry(id, path.posix.join(p, n))), truncated: false };
  }

  async stat(id: string, p: string): Promise<FileEntry> {
    this.exists(id, p);
    return this.entry(id, p);
  }

  async mkdir(id: string, p: string): Promise<boolean> {
    const existed = fs.existsSync(this.host(id, p));
    fs.mkdirSync(this.host(id, p), { recursive: true });
    return !existed;
  }

  async rename(id: string, from: string, to: string): Promise<FileEntry> {
    this.exists(id, from);
    fs.renameSync(this.host(id, from), this.host(id, to));
    return this.entry(id, to);
  }

  async remove(id: string, p: string): Promise<void> {
    this.exists(id, p);
    fs.rmSync(this.host(id, p), { recursive: true });
  }

  /** The guest agent's own watch module, on the sandbox's directory (no channel in between). */
  async watch(id: string, p: string, recursive: boolean, handlers: WatchHandlers): Promise<WatchHandle> {
    if (this.core.watchUnsupported) throw new FilesError('EINVAL', 'unknown files operation watch');
    this.exists(id, p);
    const watch = new DirectoryWatch(this.host(id, p), p, recursive, {
      events: (events) => handlers.onEvents(events),
      overflow: (dropped) => handlers.onOverflow(dropped),
      fail: (code, message) => handlers.onEnd(new FilesError(code, message)),
    });
    const dirs = await watch.start();
    return { dirs, close: () => watch.close() };
  }
}

export { Readable };
