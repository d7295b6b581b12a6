/**
 * The types at the core's boundary: what every front end (the CLI, `shoal serve`, the E2B API,
 * `shoal mcp`, the containerd shim) hands the core and gets back. Values arrive here as the
 * user gave them (strings for the container flags, lists of `HOST:GUEST` for ports and maps)
 * and the core validates them, so no front end can skip a rule.
 */
import type { ContainerFlags, ContainerOptions } from '../container/container-options';
import type { TerminalSize } from '../protocol/messages';
import type { JailerChoice } from '../vmm/select';

export interface CreateSpec {
  /** A registry reference, docker-archive:PATH or oci-archive:PATH. Exactly one of image and snapshot. */
  image?: string;
  /** A snapshot tag: the VM is a clone of it (only name, publish and autoRemove apply then). */
  snapshot?: string;
  /** Default: a random `vm-xxxxxx`. */
  name?: string;
  /** Default 1. */
  cpus?: number;
  /** Default 1024. */
  memoryMiB?: number;
  env?: Record<string, string>;
  /** The container's command (empty or absent: the image's). */
  cmd?: string[];
  /** podman's run flags as typed: user, workdir, entrypoint, hostname, label, capabilities... */
  container?: ContainerFlags;
  /**
   * The same, already parsed and checked by the front end (the shim, from an OCI bundle's
   * config.json). Not with `container`.
   */
  containerOptions?: ContainerOptions;
  /** rootless (default), slirp4netns, bridged, ns:PATH (a CNI pod's namespace), none; `:allow_host_loopback=true`. */
  network?: string;
  /** `[ADDR:]HOST:GUEST[/tcp|/udp]`, each possibly comma-separated. */
  publish?: string[];
  /** `HOST:GUEST[:ro]` host directories shown to the container. */
  maps?: string[];
  /** Snapshot the app once this URL answers in the guest (a startup snapshot). */
  healthCheck?: string;
  /**
   * A client will attach to the container's stdio (startVm, then `SupervisorClient.attach`): the
   * supervisor gives it a moment to attach before the container starts. Default: detached.
   */
  attached?: boolean;
  /** The container reads stdin (an attached CLI's). */
  interactive?: boolean;
  /** Run the container on a terminal of this size. */
  tty?: TerminalSize;
  /** Remove the VM when its container exits. */
  autoRemove?: boolean;
  /** auto (default), qemu or firecracker. */
  vmm?: string;
  jailer?: JailerChoice;
  /** Use the image cache (default true). */
  imageCache?: boolean;
}

/** Something a long operation reports while it runs (the supervisor's own progress lines among them). */
export interface ProgressEvent {
  /** Which operation: create, clone, snapshot, fork. */
  stage: string;
  message: string;
}

export type OnProgress = (event: ProgressEvent) => void;

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
  /** The working directory (absolute). */
  cwd?: string;
  /** USER[:GROUP], names or numeric ids, resolved in the container. */
  user?: string;
  /** In the guest OS instead of the container. */
  vm: boolean;
  /** Attach stdin (else it is /dev/null). */
  stdin: boolean;
  /** Run on a terminal of this size (output on stdout only). */
  tty?: TerminalSize;
  /**
   * Keep the process in the guest agent's table with this tag (at most 4096 bytes; the front
   * end's own label, e.g. its API and id): it outlives the connection, a restart of the front
   * end and a pause/resume, and can be listed (keptProcesses) and attached to (attachKept).
   */
  keep?: string;
}

/**
 * How a process ended: its exit, or why it could not run. `lost`: the link to the VM went away
 * before the end was known (the VM stopped or was paused, its supervisor died); a kept process
 * may still run in the guest.
 */
export type ProcessEnd = { exitCode: number | null; signal: string | null } | { error: string; lost?: boolean };

/** A process in a VM: output with flow control, input, signals, its end. */
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

export type { KeptProcessInfo } from '../protocol/kept';

export interface SnapshotView {
  tag: string;
  /** The id of the VM it was taken of. */
  parent: string;
  createdAt: string;
  image: string;
}
