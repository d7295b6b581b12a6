/**
 * The shim's one seam to shoal's core: creating an ordinary shoal VM (src/core's startVm, as
 * `shoal run` does), following its main container, exec into it, signals, and removing it (the
 * core's removeVm, as `shoal rm -f`). Nothing here knows ttrpc.
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { onControlEvents, sendClientMessage, SupervisorClient } from '../control/client';
import type { ContainerOptions } from '../container/container-options';
import { podmanRun } from '../container/podman-argv';
import { createVm, removeVm as removeCoreVm, startVm } from '../core';
import { exitCodeOf, type TerminalSize } from '../protocol/messages';
import { STDERR, STDIN, STDOUT, type Channel } from '../protocol/mux';
import { StateStore } from '../state/store';
import { nameProblem, NAME_MAX, type VmRecord } from '../state/vm-record';
import { ShoalError } from '../util/errors';

/** What the shim asks for: one container in a new VM. */
export interface VmRequest {
  namespace: string;
  containerId: string;
  /** A docker-archive holding the container's rootfs as its one layer. */
  archive: string;
  args: string[];
  env: Record<string, string>;
  container: ContainerOptions;
  stdin: boolean;
  tty?: TerminalSize;
  cpus: number;
  memoryMiB: number;
  /** shoal's --network value: rootless for a lone container, ns:PATH for a pod's sandbox. */
  network: string;
}

/** A container of a pod that runs beside the VM's main one, in the same guest (podman run). */
export interface PodContainerRequest {
  /** The podman container name in the guest (the containerd id). */
  name: string;
  args: string[];
  env: Record<string, string>;
  container: ContainerOptions;
  stdin: boolean;
  tty?: TerminalSize;
}

/** Bounds on the guest's answers while unpacking (tar's messages, not data). */
const MAX_GUEST_MESSAGES = 64 * 1024;
const UNPACK_TIMEOUT_MS = 300_000;
const RUNNING_TIMEOUT_MS = 120_000;

/** Where a pod container's rootfs lives in the guest: on the scratch disk, beside podman's storage. */
export function podContainerRoot(name: string): string {
  return `/var/lib/containers/shoal-pod/${name}`;
}

/** podman's --cidfile for a pod container: the id crun knows it by. */
function podContainerCidFile(name: string): string {
  return `/run/shoal-pod.${name}.cid`;
}

/** Where a process's output goes and where its exit is reported. */
export interface ProcessSink {
  stdout(data: Buffer): Promise<void> | void;
  stderr(data: Buffer): Promise<void> | void;
  /** Called once: the exit code (128+N for a signal), or an error that ended the process's follow. */
  exited(code: number, error?: string): void;
}

/** A process the shim follows: the main container (attach) or an exec. */
export interface VmProcess {
  write(data: Buffer): Promise<void>;
  endStdin(): void;
  signal(signal: string): void;
  resize(size: TerminalSize): void;
}

/** The shoal VM name for a containerd container: readable in `shoal ls`, unique per namespace/id. */
export function vmNameFor(namespace: string, containerId: string): string {
  const plain = `ctr-${namespace}-${containerId}`.replace(/[^a-zA-Z0-9_.-]/g, '_');
  if (plain.length <= NAME_MAX && !nameProblem(plain)) return plain;
  const hash = crypto.createHash('sha256').update(`${namespace}/${containerId}`).digest('hex').slice(0, 8);
  return `ctr-${hash}-${containerId.replace(/[^a-zA-Z0-9_.-]/g, '_')}`.slice(0, NAME_MAX);
}

export class ShimVm {
  private constructor(
    readonly store: StateStore,
    readonly record: VmRecord,
    private readonly client: SupervisorClient,
  ) {}

  /**
   * Writes the VM's record and starts its supervisor, as `shoal run` does; the supervisor holds
   * the container back until the first attach (follow()).
   */
  static async create(request: VmRequest): Promise<ShimVm> {
    const store = new StateStore();
    const { record, client } = await startVm(store, {
      image: `docker-archive:${request.archive}`,
      name: vmNameFor(request.namespace, request.containerId),
      cmd: request.args,
      env: request.env,
      cpus: request.cpus,
      memoryMiB: request.memoryMiB,
      interactive: request.stdin,
      ...(request.tty ? { tty: request.tty } : {}),
      // The supervisor holds the container back until the shim attaches (follow()).
      attached: true,
      network: request.network,
      containerOptions: request.container,
      vmm: process.env.SHOAL_VMM ?? 'auto',
      // Every rootfs archive is new to the cache (its key hashes the archive): saving one per
      // container would cost a snapshot each and never hit. TODO: key by the snapshot chain.
      imageCache: false,
    }, undefined, false);
    return new ShimVm(store, record, client);
  }

  /**
   * A pod's VM as a clone of a snapshot (shoal.dev/restore-from) in the pod's namespace: it takes
   * the namespace's address as bridged clones take theirs, and it runs what its snapshot ran.
   */
  static async restore(request: { namespace: string; containerId: string; snapshot: string; netnsPath: string }): Promise<ShimVm> {
    const store = new StateStore();
    const record = await createVm(store, { snapshot: request.snapshot, name: vmNameFor(request.namespace, request.containerId), network: `ns:${request.netnsPath}` });
    try {
      return new ShimVm(store, record, await SupervisorClient.connect(store, record));
    } catch (err) {
      await removeCoreVm(store, record);
      throw err;
    }
  }

  /** The record as the supervisor keeps it now. */
  current(): VmRecord | undefined {
    return this.store.read(this.record.id);
  }

  /** A host pid standing for the VM: its VMM, else its supervisor. */
  pid(): number {
    const record = this.current();
    return record?.vmmPid ?? record?.supervisorPid ?? 0;
  }

  /**
   * Attaches to the main container (which the supervisor then starts); `running` resolves once
   * it runs, and rejects if it ends or fails first.
   */
  follow(sink: ProcessSink): { process: VmProcess; running: Promise<void> } {
    const channel = this.client.attach(true);
    let onRunning: () => void = () => undefined;
    let onFailed: (err: Error) => void = () => undefined;
    const running = new Promise<void>((resolve, reject) => { onRunning = resolve; onFailed = reject; });
    running.catch(() => undefined);
    let exitCode: number | undefined;
    let error: string | undefined;
    onControlEvents(channel, (event) => {
      if (event.type === 'running') onRunning();
      else if (event.type === 'exit') exitCode = exitCodeOf(event);
      else if (event.type === 'error') error = event.message;
    });
    this.relay(channel, sink, () => {
      if (exitCode === undefined) onFailed(new ShoalError(error ?? 'lost the connection to the VM supervisor'));
      else onRunning();
      sink.exited(exitCode ?? 255, exitCode === undefined ? error ?? 'lost the connection to the VM supervisor' : undefined);
    });
    return { process: processOf(channel), running };
  }

  /**
   * Runs a process in the container (the agent enters it with crun exec, as `shoal exec` does):
   * the main one, or a pod's other container by name.
   */
  exec(spec: { args: string[]; env: Record<string, string>; cwd?: string; user?: string; stdin: boolean; tty?: TerminalSize }, sink: ProcessSink, container?: string): VmProcess {
    const channel = this.client.exec({
      argv: spec.args,
      env: spec.env,
      interactive: spec.stdin,
      vm: false,
      ...(container !== undefined ? { container } : {}),
      ...(spec.tty ? { tty: spec.tty } : {}),
      ...(spec.user !== undefined ? { user: spec.user } : {}),
      ...(spec.cwd !== undefined ? { workdir: spec.cwd } : {}),
    });
    let exitCode: number | undefined;
    let error: string | undefined;
    onControlEvents(channel, (event) => {
      if (event.type === 'exit') exitCode = exitCodeOf(event);
      else if (event.type === 'error') error = event.message;
    });
    this.relay(channel, sink, () => sink.exited(exitCode ?? 255, exitCode === undefined ? error ?? 'the exec ended without an exit code' : undefined));
    return processOf(channel);
  }

  /** Runs a command in the guest OS (not the container) and returns its stdout; bounded. */
  async guestOutput(argv: string[], timeoutMs = 10_000): Promise<string> {
    const channel = this.client.exec({ argv, env: {}, interactive: false, vm: true });
    const chunks: Buffer[] = [];
    let size = 0;
    let exitCode: number | undefined;
    onControlEvents(channel, (event) => {
      if (event.type === 'exit') exitCode = exitCodeOf(event);
    });
    return new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => { channel.close(); reject(new ShoalError(`${argv[0]} in the VM timed out`)); }, timeoutMs);
      channel.setDataHandler((stream, data) => {
        if (stream === STDOUT && size < 1 << 20) { chunks.push(data); size += data.length; }
      });
      channel.on('close', () => {
        clearTimeout(timer);
        if (exitCode === 0) resolve(Buffer.concat(chunks).toString('utf8'));
        else reject(new ShoalError(`${argv.join(' ')} in the VM failed (exit ${exitCode ?? 'unknown'})`));
      });
    });
  }

  /**
   * Unpacks a pod container's rootfs (the snapshotter's tree, mounted on the host) into the
   * guest at podContainerRoot(name): GNU tar on both ends (numeric owners, modes, xattrs),
   * streamed over a guest exec's stdin with the channel's flow control.
   */
  async unpackRootfs(hostRootfs: string, name: string): Promise<void> {
    const dir = podContainerRoot(name);
    const channel = this.client.exec({
      argv: ['sh', '-c', 'rm -rf -- "$1" && mkdir -p -- "$1" && exec tar -x --numeric-owner -p --xattrs --xattrs-include="*" -C "$1"', 'sh', dir],
      env: {},
      interactive: true,
      vm: true,
    });
    let exitCode: number | undefined;
    let error: string | undefined;
    let messages = '';
    onControlEvents(channel, (event) => {
      if (event.type === 'exit') exitCode = exitCodeOf(event);
      else if (event.type === 'error') error = event.message;
    });
    channel.setDataHandler((stream, data) => {
      if ((stream === STDOUT || stream === STDERR) && messages.length < MAX_GUEST_MESSAGES) messages += data.toString('utf8').slice(0, MAX_GUEST_MESSAGES - messages.length);
    });
    const closed = new Promise<void>((resolve) => channel.on('close', () => resolve()));
    const tar = spawn('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '-C', hostRootfs, '-cf', '-', '.'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let tarError = '';
    tar.stderr.on('data', (d: Buffer) => { if (tarError.length < MAX_GUEST_MESSAGES) tarError += d.toString(); });
    const tarDone = new Promise<number | null>((resolve) => tar.on('close', (code) => resolve(code)));
    const timer = setTimeout(() => { tar.kill('SIGKILL'); channel.close(); }, UNPACK_TIMEOUT_MS);
    try {
      for await (const chunk of tar.stdout) {
        if (channel.closed) break;
        await channel.write(STDIN, chunk as Buffer);
      }
      const tarCode = await tarDone;
      if (tarCode !== 0) {
        channel.close();
        throw new ShoalError(`archiving the container's rootfs failed: ${tarError.trim().split('\n').pop() ?? `tar exited ${tarCode}`}`);
      }
      if (!channel.closed) channel.end(STDIN);
      await closed;
    } finally {
      clearTimeout(timer);
      if (tar.exitCode === null) tar.kill('SIGKILL');
    }
    if (exitCode !== 0) {
      const last = messages.trim().split('\n').pop() ?? '';
      throw new ShoalError(`unpacking the container's rootfs in the pod's VM failed: ${error ?? (last || `tar exited ${exitCode ?? 'without a code'}`)}`);
    }
  }

  /**
   * Runs a pod's container in the guest beside the main one (podman run --rootfs on the tree
   * unpackRootfs put there, the guest's network, so the pod's containers reach each other on
   * localhost). `running` resolves once crun reports it running, or once it already ended (a
   * short-lived container); it rejects if it never ran.
   */
  runContainer(request: PodContainerRequest, sink: ProcessSink): { process: VmProcess; running: Promise<void> } {
    const run = podmanRun({
      name: request.name,
      image: podContainerRoot(request.name),
      rootfs: true,
      cidfile: podContainerCidFile(request.name),
      command: request.args,
      env: request.env,
      interactive: request.stdin,
      tty: request.tty !== undefined,
      container: request.container,
    });
    const channel = this.client.exec({ argv: run.argv, env: run.processEnv, interactive: request.stdin, vm: true, ...(request.tty ? { tty: request.tty } : {}) });
    let exitCode: number | undefined;
    let error: string | undefined;
    let ended = false;
    onControlEvents(channel, (event) => {
      if (event.type === 'exit') exitCode = exitCodeOf(event);
      else if (event.type === 'error') error = event.message;
    });
    channel.on('close', () => { ended = true; });
    this.relay(channel, sink, () => sink.exited(exitCode ?? 255, exitCode === undefined ? error ?? 'lost the connection to the VM supervisor' : undefined));
    const running = (async () => {
      // crun's state is one small process (podman's own `wait` costs seconds under TCG, and
      // would compete with the podman run it waits for).
      const deadline = Date.now() + RUNNING_TIMEOUT_MS;
      const check = ['sh', '-c', 'test -s "$1" && exec crun --root /run/crun state "$(cat "$1")"', 'sh', podContainerCidFile(request.name)];
      while (!ended && Date.now() < deadline) {
        const state = await this.guestOutput(check, 10_000).catch(() => '');
        if (/"status"\s*:\s*"(running|stopped)"/.test(state)) return;
        await new Promise((r) => setTimeout(r, 200));
      }
      if (ended && exitCode !== undefined) return; // it ran and already ended
      throw new ShoalError(error ?? `container ${request.name} did not start in the pod's VM`);
    })();
    running.catch(() => undefined);
    return { process: processOf(channel), running };
  }

  /** Signals one of the pod's containers (crun kill on its id: SIGKILL reaches a process that ignores SIGTERM). */
  async signalContainer(name: string, signal: string): Promise<void> {
    await this.guestOutput(['sh', '-c', 'exec crun --root /run/crun kill "$(cat "$1")" "$2"', 'sh', podContainerCidFile(name), signal.replace(/^SIG/, '')]);
  }

  /** Removes one of the pod's containers, its rootfs and its id file from the guest (best effort: the VM may be gone). */
  async removeContainer(name: string): Promise<void> {
    await this.guestOutput(['sh', '-c', 'podman rm --force --time 0 "$1" >/dev/null 2>&1; rm -rf -- "$2" "$3"', 'sh', name, podContainerRoot(name), podContainerCidFile(name)], 30_000).catch(() => undefined);
  }

  /** Kills the VM and removes it (record, files, name), as `shoal rm -f` does. */
  async remove(): Promise<void> {
    this.client.close();
    await removeVm(this.store, this.record.id);
  }

  private relay(channel: Channel, sink: ProcessSink, closed: () => void): void {
    channel.setDataHandler((stream, data) => {
      if (stream === STDOUT) return sink.stdout(data) ?? undefined;
      if (stream === STDERR) return sink.stderr(data) ?? undefined;
      return undefined;
    });
    channel.on('close', closed);
  }
}

function processOf(channel: Channel): VmProcess {
  return {
    write: (data) => channel.write(STDIN, data),
    endStdin: () => { if (!channel.closed) channel.end(STDIN); },
    signal: (signal) => { if (!channel.closed) sendClientMessage(channel, { type: 'signal', signal }); },
    resize: (size) => { if (!channel.closed) sendClientMessage(channel, { type: 'resize', ...size }); },
  };
}

/** Kills and removes a VM by id, if it still exists (the shim's Delete and `delete` after a dead shim). */
export async function removeVm(store: StateStore, id: string): Promise<void> {
  const record = store.read(id);
  if (!record) return;
  await removeCoreVm(store, record);
}

/** The state store the shim's VMs live in (SHOAL_STATE_DIR, as for every shoal command). */
export function shimStore(): StateStore {
  return new StateStore();
}
