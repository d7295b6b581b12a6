/**
 * containerd's Task service (runtime v2, containerd.task.v2.Task) over shoal VMs: one VM per
 * container, its main process the VM's main container, execs through the supervisor. Requests
 * are decoded where they enter; what a VM cannot do is an error with its reason, never a silent
 * success. Process states follow runc's shim: created -> running -> stopped, Delete removes.
 */
import path from 'node:path';
import os from 'node:os';
import { create, fromBinary, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { EmptySchema, type Timestamp } from '@bufbuild/protobuf/wkt';
import * as shim from './gen/containerd/shim_pb';
import { ProcessInfoSchema, Status } from './gen/containerd/task_pb';
import { TaskCreateSchema, TaskDeleteSchema, TaskExecAddedSchema, TaskExecStartedSchema, TaskExitSchema, TaskIOSchema, TaskStartSchema } from './gen/containerd/events_pb';
import { MountSchema } from './gen/containerd/mount_pb';
import { EventPublisher, TOPICS, timestamp } from './events';
import { containerOptionsOf, parseProcessSpec, readBundleSpec, type BundleSpec, type ProcessSpec } from './oci-spec';
import { buildRootfsArchive, mountRootfs, rootfsDir, unmountRootfs } from './rootfs';
import { ProcessIo } from './stdio';
import { ShimVm, type ProcessSink, type VmProcess } from './vm';
import { removeBundleFiles, ROOTFS_ARCHIVE_FILE, writeBundleState } from './bundle-state';
import { Code, TtrpcError } from './ttrpc/status';
import type { TtrpcServer } from './ttrpc/server';
import { ShoalError } from '../util/errors';

const SERVICE = 'containerd.task.v2.Task';
const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;
const DEFAULT_MEMORY_MIB = 1024;

/** One process: the container's main one (execId '') or an exec. */
class Proc {
  status = Status.CREATED;
  pid = 0;
  exitStatus = 0;
  exitedAt: Timestamp | undefined;
  process: VmProcess | undefined;
  private settle: () => void = () => undefined;
  readonly exited = new Promise<void>((resolve) => { this.settle = resolve; });

  constructor(readonly execId: string, readonly io: ProcessIo, readonly spec: ProcessSpec) {}

  /** Output first, then the state: a Wait that returns has all the output behind it. */
  async finish(code: number): Promise<void> {
    if (this.status === Status.STOPPED) return;
    await this.io.close();
    this.status = Status.STOPPED;
    this.exitStatus = code;
    this.exitedAt = timestamp(new Date());
    this.settle();
  }

  sink(onExit: (code: number, error?: string) => void): ProcessSink {
    return {
      stdout: (data) => this.io.writeStdout(data),
      stderr: (data) => this.io.writeStderr(data),
      exited: (code, error) => onExit(code, error),
    };
  }
}

class Container {
  /** Its own VM (a lone container's, a pod sandbox's) or, for a pod's app container, the sandbox's. */
  vm: ShimVm | undefined;
  readonly execs = new Map<string, Proc>();

  constructor(
    readonly id: string,
    readonly bundle: string,
    readonly spec: BundleSpec,
    readonly main: Proc,
    readonly rootfs: shim.CreateTaskRequest['rootfs'],
    /** The image reference its rootfs archive is tagged with. */
    readonly image: string,
    /** A pod's app container: the sandbox whose VM it runs in (podman container named by its id). */
    readonly sandbox?: Container,
  ) {}
}

export class TaskService {
  private readonly containers = new Map<string, Container>();

  constructor(
    private readonly namespace: string,
    private readonly events: EventPublisher,
    private readonly log: (line: string) => void,
    /** Ends the shim (after the Shutdown response went out). */
    private readonly shutdown: () => void,
  ) {}

  register(server: TtrpcServer): void {
    const method = <I extends DescMessage, O extends DescMessage>(name: string, input: I, output: O, handler: (request: MessageShape<I>) => Promise<MessageShape<O>>): void => {
      server.register(SERVICE, name, async (payload) => {
        let request: MessageShape<I>;
        try {
          request = fromBinary(input, payload);
        } catch (err) {
          throw new TtrpcError(Code.INVALID_ARGUMENT, `malformed ${name} request: ${(err as Error).message}`);
        }
        try {
          return toBinary(output, await handler(request));
        } catch (err) {
          if (err instanceof TtrpcError) throw err;
          // A user-facing error from shoal (bad bundle, VM failed to start): one clear line.
          throw new TtrpcError(err instanceof ShoalError ? Code.FAILED_PRECONDITION : Code.UNKNOWN, (err as Error).message);
        }
      });
    };
    const empty = create(EmptySchema);
    method('Create', shim.CreateTaskRequestSchema, shim.CreateTaskResponseSchema, (r) => this.create(r));
    method('Start', shim.StartRequestSchema, shim.StartResponseSchema, (r) => this.start(r));
    method('State', shim.StateRequestSchema, shim.StateResponseSchema, async (r) => this.state(r));
    method('Wait', shim.WaitRequestSchema, shim.WaitResponseSchema, (r) => this.wait(r));
    method('Kill', shim.KillRequestSchema, EmptySchema, async (r) => { await this.kill(r); return empty; });
    method('Delete', shim.DeleteRequestSchema, shim.DeleteResponseSchema, (r) => this.delete(r));
    method('Exec', shim.ExecProcessRequestSchema, EmptySchema, async (r) => { this.exec(r); return empty; });
    method('ResizePty', shim.ResizePtyRequestSchema, EmptySchema, async (r) => { this.resize(r); return empty; });
    method('CloseIO', shim.CloseIORequestSchema, EmptySchema, async (r) => { if (r.stdin) this.proc(r.id, r.execId).io.closeStdin(); return empty; });
    method('Pids', shim.PidsRequestSchema, shim.PidsResponseSchema, (r) => this.pids(r));
    method('Stats', shim.StatsRequestSchema, shim.StatsResponseSchema, async () => {
      throw new TtrpcError(Code.UNIMPLEMENTED, 'stats: shoal does not report cgroup statistics from inside the VM yet');
    });
    method('Update', shim.UpdateTaskRequestSchema, EmptySchema, async () => {
      throw new TtrpcError(Code.FAILED_PRECONDITION, 'update: a shoal VM is sized when it starts (linux.resources in the bundle); its resources cannot change while it runs');
    });
    method('Pause', shim.PauseRequestSchema, EmptySchema, async () => { throw new TtrpcError(Code.UNIMPLEMENTED, 'pause: not supported by the shoal shim (use shoal snapshot create)'); });
    method('Resume', shim.ResumeRequestSchema, EmptySchema, async () => { throw new TtrpcError(Code.UNIMPLEMENTED, 'resume: not supported by the shoal shim'); });
    method('Checkpoint', shim.CheckpointTaskRequestSchema, EmptySchema, async () => { throw new TtrpcError(Code.UNIMPLEMENTED, 'checkpoint: not supported by the shoal shim (shoal snapshots whole VMs: shoal snapshot create)'); });
    method('Connect', shim.ConnectRequestSchema, shim.ConnectResponseSchema, async (r) => {
      const container = this.containers.get(r.id);
      return create(shim.ConnectResponseSchema, { shimPid: process.pid, taskPid: container?.main.pid ?? 0, version: '2' });
    });
    method('Shutdown', shim.ShutdownRequestSchema, EmptySchema, async (r) => {
      // As runc's shim: a shim that still has containers stays, unless told `now`.
      if (r.now || this.containers.size === 0) setImmediate(() => this.shutdown());
      return empty;
    });
  }

  private container(id: string): Container {
    const container = this.containers.get(id);
    if (!container) throw new TtrpcError(Code.NOT_FOUND, `container ${id.slice(0, 128)} not found`);
    return container;
  }

  private proc(id: string, execId: string): Proc {
    const container = this.container(id);
    if (execId === '') return container.main;
    const proc = container.execs.get(execId);
    if (!proc) throw new TtrpcError(Code.NOT_FOUND, `process ${execId.slice(0, 128)} of ${id.slice(0, 128)} not found`);
    return proc;
  }

  private async create(r: shim.CreateTaskRequest): Promise<shim.CreateTaskResponse> {
    if (!ID.test(r.id)) throw new TtrpcError(Code.INVALID_ARGUMENT, `invalid container id "${r.id.slice(0, 128)}"`);
    if (this.containers.has(r.id)) throw new TtrpcError(Code.ALREADY_EXISTS, `container ${r.id} already exists`);
    if (r.checkpoint !== '' || r.parentCheckpoint !== '') throw new TtrpcError(Code.UNIMPLEMENTED, 'create from a checkpoint: not supported by the shoal shim');
    if (!path.isAbsolute(r.bundle)) throw new TtrpcError(Code.INVALID_ARGUMENT, 'the bundle path must be absolute');
    const spec = readBundleSpec(r.bundle);
    if (spec.process.terminal !== r.terminal) throw new TtrpcError(Code.INVALID_ARGUMENT, 'config.json process.terminal and the request\'s terminal disagree');
    let sandbox: Container | undefined;
    if (spec.criType === 'container') {
      sandbox = this.containers.get(spec.sandboxId!);
      if (!sandbox || sandbox.spec.criType !== 'sandbox') throw new TtrpcError(Code.FAILED_PRECONDITION, `the pod's sandbox ${spec.sandboxId!.slice(0, 128)} is not in this shim: create it first`);
    } else if (spec.criType === 'sandbox') {
      if (spec.sandboxId !== r.id) throw new TtrpcError(Code.INVALID_ARGUMENT, `a sandbox's ${'io.kubernetes.cri.sandbox-id'} must be its own id`);
      if (spec.netnsPath === undefined) throw new TtrpcError(Code.FAILED_PRECONDITION, 'a pod on the host\'s network (hostNetwork) cannot run in a shoal VM: the VM has its own network stack');
    }
    const image = `localhost/containerd-${r.id.toLowerCase().replace(/[^a-z0-9_.-]/g, '_').slice(0, 100)}:latest`;
    await mountRootfs(r.bundle, r.rootfs.map((m) => ({ type: m.type, source: m.source, options: m.options })));
    const archive = path.join(r.bundle, ROOTFS_ARCHIVE_FILE);
    let io: ProcessIo | undefined;
    try {
      // A pod's app container goes into the pod's VM as a plain tree at its Start (no image).
      if (!sandbox) await buildRootfsArchive(rootfsDir(r.bundle), archive, image);
      io = ProcessIo.open({ stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal });
    } catch (err) {
      await unmountRootfs(r.bundle);
      removeBundleFiles(r.bundle);
      throw err;
    }
    const container = new Container(r.id, r.bundle, spec, new Proc('', io, spec.process), r.rootfs, image, sandbox);
    // Not silent: a host path cannot be bound into the VM's container (hostPath/emptyDir through --map is not done).
    for (const mount of spec.ignoredMounts) this.log(`${r.id}: mount ${mount} is not applied in the VM`);
    this.containers.set(r.id, container);
    this.events.publish(TOPICS.create, TaskCreateSchema, create(TaskCreateSchema, {
      containerId: r.id,
      bundle: r.bundle,
      rootfs: r.rootfs.map((m) => create(MountSchema, { type: m.type, source: m.source, target: m.target, options: m.options })),
      io: create(TaskIOSchema, { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal }),
      checkpoint: r.checkpoint,
      pid: 0,
    }));
    this.log(`created ${r.id}`);
    return create(shim.CreateTaskResponseSchema, { pid: 0 });
  }

  private async start(r: shim.StartRequest): Promise<shim.StartResponse> {
    const container = this.container(r.id);
    const proc = this.proc(r.id, r.execId);
    if (proc.status !== Status.CREATED) throw new TtrpcError(Code.FAILED_PRECONDITION, `${r.execId || r.id} is not in the created state`);
    if (r.execId !== '') return this.startExec(container, proc);
    if (container.sandbox) return this.startInPod(container, container.sandbox, proc);
    const { spec } = container;
    // A pod annotated shoal.dev/restore-from starts as a clone of that snapshot, not a boot.
    const vm = spec.restoreFrom !== undefined
      ? await ShimVm.restore({ namespace: this.namespace, containerId: r.id, snapshot: spec.restoreFrom, netnsPath: spec.netnsPath! })
      : await ShimVm.create({
        namespace: this.namespace,
        containerId: r.id,
        archive: path.join(container.bundle, ROOTFS_ARCHIVE_FILE),
        args: spec.process.args,
        env: spec.process.env,
        container: containerOptionsOf(spec),
        stdin: proc.io.hasStdin,
        ...(spec.process.terminal ? { tty: { cols: 80, rows: 24 } } : {}),
        cpus: spec.cpus ?? 1,
        memoryMiB: spec.memoryMiB ?? DEFAULT_MEMORY_MIB,
        // A pod's sandbox: the VM is the pod, its NIC wired into the namespace CNI set up.
        network: spec.criType === 'sandbox' ? `ns:${spec.netnsPath!}` : 'rootless',
      });
    container.vm = vm;
    writeBundleState(container.bundle, { vmId: vm.record.id, stateDir: vm.store.root });
    await this.untilRunning(proc, vm.follow(this.exitSink(container, proc)), `starting the VM for ${r.id} failed`);
    proc.pid = vm.pid();
    this.events.publish(TOPICS.start, TaskStartSchema, create(TaskStartSchema, { containerId: r.id, pid: proc.pid }));
    return create(shim.StartResponseSchema, { pid: proc.pid });
  }

  /** A container's main process's end: logged if it failed, then TaskExit once it is recorded. */
  private exitSink(container: Container, proc: Proc): ProcessSink {
    return proc.sink((code, error) => {
      if (error) this.log(`${container.id}: ${error}`);
      void proc.finish(code).then(() => this.publishExit(container, proc));
    });
  }

  /** The started process as the Proc's (running, stdin relayed), once it really runs. */
  private async untilRunning(proc: Proc, started: { process: VmProcess; running: Promise<void> }, failure: string): Promise<void> {
    const { process } = started;
    proc.process = process;
    proc.status = Status.RUNNING;
    proc.io.relayStdin((data) => process.write(data), () => process.endStdin());
    try {
      await started.running;
    } catch (err) {
      throw new ShoalError(`${failure}: ${(err as Error).message}`);
    }
  }

  /** A pod's app container: its rootfs loaded into the sandbox's VM, run there beside the others. */
  private async startInPod(container: Container, sandbox: Container, proc: Proc): Promise<shim.StartResponse> {
    const vm = sandbox.vm;
    if (!vm || sandbox.main.status !== Status.RUNNING) throw new TtrpcError(Code.FAILED_PRECONDITION, `the pod's sandbox ${sandbox.id} is not running`);
    const { spec } = container;
    await vm.unpackRootfs(rootfsDir(container.bundle), container.id);
    container.vm = vm;
    const options = containerOptionsOf(spec);
    // The pod's hostname is the guest's (the sandbox's); podman refuses --hostname beside it.
    delete options.hostname;
    const started = vm.runContainer({
      name: container.id,
      args: spec.process.args,
      env: spec.process.env,
      container: options,
      stdin: proc.io.hasStdin,
      ...(spec.process.terminal ? { tty: { cols: 80, rows: 24 } } : {}),
    }, this.exitSink(container, proc));
    await this.untilRunning(proc, started, `starting ${container.id} in the pod's VM failed`);
    proc.pid = sandbox.main.pid;
    this.events.publish(TOPICS.start, TaskStartSchema, create(TaskStartSchema, { containerId: container.id, pid: proc.pid }));
    return create(shim.StartResponseSchema, { pid: proc.pid });
  }

  private async startExec(container: Container, proc: Proc): Promise<shim.StartResponse> {
    const vm = container.vm;
    if (!vm || container.main.status !== Status.RUNNING) throw new TtrpcError(Code.FAILED_PRECONDITION, `container ${container.id} is not running`);
    const { spec } = proc;
    const execSpec = {
      args: spec.args,
      env: spec.env,
      cwd: spec.cwd,
      user: spec.user,
      stdin: proc.io.hasStdin,
      ...(spec.terminal ? { tty: { cols: 80, rows: 24 } } : {}),
    };
    const sink = proc.sink((code, error) => {
      if (error) this.log(`${container.id}/${proc.execId}: ${error}`);
      void proc.finish(code).then(() => this.publishExit(container, proc));
    });
    // A pod's app container is a podman container beside the VM's main one, entered by name.
    const process = vm.exec(execSpec, sink, container.sandbox ? container.id : undefined);
    proc.process = process;
    proc.status = Status.RUNNING;
    proc.pid = container.main.pid;
    proc.io.relayStdin((data) => process.write(data), () => process.endStdin());
    this.events.publish(TOPICS.execStarted, TaskExecStartedSchema, create(TaskExecStartedSchema, { containerId: container.id, execId: proc.execId, pid: proc.pid }));
    return create(shim.StartResponseSchema, { pid: proc.pid });
  }

  private publishExit(container: Container, proc: Proc): void {
    this.events.publish(TOPICS.exit, TaskExitSchema, create(TaskExitSchema, {
      containerId: container.id,
      id: proc.execId === '' ? container.id : proc.execId,
      pid: proc.pid,
      exitStatus: proc.exitStatus,
      ...(proc.exitedAt ? { exitedAt: proc.exitedAt } : {}),
    }));
  }

  private state(r: shim.StateRequest): shim.StateResponse {
    const container = this.container(r.id);
    const proc = this.proc(r.id, r.execId);
    return create(shim.StateResponseSchema, {
      id: r.execId === '' ? r.id : r.execId,
      bundle: container.bundle,
      pid: proc.pid,
      status: proc.status,
      stdin: proc.io.paths.stdin,
      stdout: proc.io.paths.stdout,
      stderr: proc.io.paths.stderr,
      terminal: proc.io.paths.terminal,
      exitStatus: proc.exitStatus,
      ...(proc.exitedAt ? { exitedAt: proc.exitedAt } : {}),
      execId: r.execId,
    });
  }

  private async wait(r: shim.WaitRequest): Promise<shim.WaitResponse> {
    const proc = this.proc(r.id, r.execId);
    await proc.exited;
    return create(shim.WaitResponseSchema, { exitStatus: proc.exitStatus, ...(proc.exitedAt ? { exitedAt: proc.exitedAt } : {}) });
  }

  private async kill(r: shim.KillRequest): Promise<void> {
    const proc = this.proc(r.id, r.execId);
    const name = signalName(r.signal);
    if (proc.status === Status.STOPPED) throw new TtrpcError(Code.NOT_FOUND, 'process already finished');
    if (proc.status === Status.CREATED || !proc.process) {
      // Never started: there is no process to signal; it ends as if killed, as runc's does.
      void proc.finish(128 + r.signal).then(() => this.publishExit(this.container(r.id), proc));
      return;
    }
    const container = this.container(r.id);
    if (container.sandbox && r.execId === '') {
      // podman's own kill (the podman run in the guest is only its client).
      await container.vm!.signalContainer(container.id, name).catch((err: Error) => {
        if (proc.status !== Status.STOPPED) throw err;
      });
      return;
    }
    proc.process.signal(name);
  }

  private async delete(r: shim.DeleteRequest): Promise<shim.DeleteResponse> {
    const container = this.container(r.id);
    const proc = this.proc(r.id, r.execId);
    if (proc.status === Status.RUNNING) throw new TtrpcError(Code.FAILED_PRECONDITION, `${r.execId || r.id} is running: kill it first`);
    const response = create(shim.DeleteResponseSchema, { pid: proc.pid, exitStatus: proc.exitStatus, ...(proc.exitedAt ? { exitedAt: proc.exitedAt } : {}) });
    if (r.execId !== '') {
      container.execs.delete(r.execId);
      await proc.io.close();
      return response;
    }
    if ([...container.execs.values()].some((e) => e.status === Status.RUNNING)) throw new TtrpcError(Code.FAILED_PRECONDITION, `${r.id} still has running execs`);
    await proc.io.close();
    // A pod's container goes from the guest while the pod's VM runs (after StopPodSandbox it is gone with the VM).
    if (container.sandbox) {
      if (container.sandbox.main.status === Status.RUNNING) await container.vm?.removeContainer(container.id);
    }
    else await container.vm?.remove();
    await unmountRootfs(container.bundle);
    removeBundleFiles(container.bundle);
    this.containers.delete(r.id);
    this.events.publish(TOPICS.delete, TaskDeleteSchema, create(TaskDeleteSchema, {
      containerId: r.id,
      id: r.id,
      pid: proc.pid,
      exitStatus: proc.exitStatus,
      ...(proc.exitedAt ? { exitedAt: proc.exitedAt } : {}),
    }));
    this.log(`deleted ${r.id}`);
    return response;
  }

  private exec(r: shim.ExecProcessRequest): void {
    const container = this.container(r.id);
    if (!ID.test(r.execId)) throw new TtrpcError(Code.INVALID_ARGUMENT, `invalid exec id "${r.execId.slice(0, 128)}"`);
    if (container.execs.has(r.execId)) throw new TtrpcError(Code.ALREADY_EXISTS, `exec ${r.execId} already exists`);
    if (container.main.status !== Status.RUNNING) throw new TtrpcError(Code.FAILED_PRECONDITION, `container ${r.id} is not running`);
    if (!r.spec) throw new TtrpcError(Code.INVALID_ARGUMENT, 'exec: the process spec is missing');
    let value: unknown;
    try {
      value = JSON.parse(Buffer.from(r.spec.value).toString('utf8'));
    } catch {
      throw new TtrpcError(Code.INVALID_ARGUMENT, 'exec: the process spec is not JSON');
    }
    let spec: ProcessSpec;
    try {
      spec = parseProcessSpec(value, 'exec process');
    } catch (err) {
      throw new TtrpcError(Code.INVALID_ARGUMENT, (err as Error).message);
    }
    if (spec.terminal !== r.terminal) throw new TtrpcError(Code.INVALID_ARGUMENT, 'exec: the spec\'s terminal and the request\'s disagree');
    const io = ProcessIo.open({ stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, terminal: r.terminal });
    container.execs.set(r.execId, new Proc(r.execId, io, spec));
    this.events.publish(TOPICS.execAdded, TaskExecAddedSchema, create(TaskExecAddedSchema, { containerId: r.id, execId: r.execId }));
  }

  private resize(r: shim.ResizePtyRequest): void {
    const proc = this.proc(r.id, r.execId);
    if (!proc.io.paths.terminal) throw new TtrpcError(Code.FAILED_PRECONDITION, `${r.execId || r.id} has no terminal`);
    const cols = Math.min(Math.max(r.width, 1), 1000);
    const rows = Math.min(Math.max(r.height, 1), 1000);
    proc.process?.resize({ cols, rows });
  }

  private async pids(r: shim.PidsRequest): Promise<shim.PidsResponse> {
    const container = this.container(r.id);
    if (!container.vm || container.main.status !== Status.RUNNING) return create(shim.PidsResponseSchema, {});
    // The container's processes as the guest numbers them (podman's view of its container).
    const output = await container.vm.guestOutput(['podman', 'top', container.sandbox ? container.id : 'main', 'hpid']);
    const pids = output.split('\n').slice(1).map((l) => Number(l.trim())).filter((n) => Number.isInteger(n) && n > 0);
    return create(shim.PidsResponseSchema, { processes: pids.map((pid) => create(ProcessInfoSchema, { pid })) });
  }

  /** Whether any container remains (the daemon stays while one does). */
  get empty(): boolean {
    return this.containers.size === 0;
  }

  /** Best-effort removal of every VM (the daemon is going away). */
  async removeAll(): Promise<void> {
    for (const container of this.containers.values()) {
      if (!container.sandbox) await container.vm?.remove().catch(() => undefined);
      await unmountRootfs(container.bundle);
    }
  }
}

function signalName(signal: number): string {
  const entry = Object.entries(os.constants.signals).find(([, n]) => n === signal);
  if (!entry || signal === 0) throw new TtrpcError(Code.INVALID_ARGUMENT, `unknown signal ${signal}`);
  return entry[0];
}
