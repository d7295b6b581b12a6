/**
 * The one seam between shoal and a VMM. Everything above this file speaks
 * only these types; QEMU (QMP) and Firecracker (REST over its API socket)
 * live behind it and must not leak their vocabulary upward.
 */
import type { Duplex } from 'node:stream';
import type { VmmTraits } from './traits';

export type VmmKind = 'qemu' | 'firecracker';
export type Accelerator = 'kvm' | 'tcg';

/** A block device given to the guest, in order: vda, vdb, ... */
export interface DriveSpec {
  /** Stable identifier (used by the VMM and for per-clone overrides). */
  id: string;
  path: string;
  readOnly: boolean;
}

/** Network identity of one VM; absent means no network device. */
export interface NetSpec {
  /** Host TAP device name, when the mode uses one. */
  tap?: string;
  /** Guest MAC address, e.g. "02:fc:00:00:00:01". */
  mac: string;
  /** QEMU user-mode networking (slirp) instead of a TAP, with host forwards. */
  userMode?: { forwards: PortForward[] };
  /**
   * The TAP lives in the user and network namespaces of this process (--network slirp4netns):
   * the VMM is started inside them. Per VM, so a restore names its own.
   */
  namespacePid?: number;
  /** The TAP lives in the network namespace at this path (--network ns:PATH): the VMM is started in it. */
  netnsPath?: string;
}

export interface PortForward {
  proto: 'tcp' | 'udp';
  hostAddress: string;
  hostPort: number;
  guestPort: number;
}

/** Everything needed to cold-boot one VM. */
export interface VmSpec {
  /** Short unique id, safe in file names. */
  id: string;
  /** Per-VM runtime directory for sockets, logs and the memory file. Short path (Unix sockets are limited to 107 bytes). */
  runDir: string;
  /** Kernel image: bzImage for QEMU, uncompressed ELF vmlinux for Firecracker on x86_64. */
  kernel: string;
  initrd?: string;
  cmdline: string;
  cpus: number;
  memoryMiB: number;
  drives: DriveSpec[];
  net?: NetSpec;
  accel: Accelerator;
  /**
   * With KVM: CPU features to change from the host's, as the boot probe found this host needs
   * (e.g. ['-arch-capabilities'] where a nested KVM refuses MSR 0x10a). QEMU appends them to
   * `-cpu host`; a snapshot keeps them, so its restores get the same CPU.
   */
  kvmCpuFlags?: readonly string[];
  /** Guest serial console output is appended here. */
  consoleLog: string;
  /**
   * When set, guest RAM is backed by this file (mapped shared), so a snapshot
   * can reuse it and clones can map it MAP_PRIVATE. Backends that cannot do
   * this ignore it and write memory at snapshot time instead.
   */
  memoryFile?: string;
}

/** Files that make up a VM snapshot (disks are handled by the snapshot layer, not the VMM). */
export interface SnapshotFiles {
  /** Device/VM state (QEMU migration stream; Firecracker snapshot_path). */
  stateFile: string;
  /** Guest memory (Firecracker mem_file_path; QEMU memory-backend-file). */
  memoryFile: string;
}

export type SnapshotKind = 'full' | 'diff';

export interface RunningSnapshotOptions {
  /** Runs while the vCPUs are stopped at the snapshot point. */
  whilePaused: () => Promise<void>;
  progress?: (message: string) => void;
}

export interface RunningSnapshotTimings {
  /** How long the vCPUs were stopped. */
  pausedMs: number;
}

/**
 * The plain way: pause, snapshot, whilePaused, resume (resumed whatever failed). A 'diff' writes
 * only what the VMM's dirty log holds into files.memoryFile, which the caller prepared.
 */
export async function pauseAndSnapshot(vm: Pick<VmHandle, 'pause' | 'resume' | 'snapshot'>, files: SnapshotFiles, options: RunningSnapshotOptions, kind: SnapshotKind = 'full'): Promise<RunningSnapshotTimings> {
  const pausedAt = Date.now();
  try {
    await vm.pause();
    options.progress?.(kind === 'diff' ? 'saving device state and the guest memory changed since the base' : 'saving device state and guest memory');
    await vm.snapshot(files, kind);
    await options.whilePaused();
  } finally {
    await vm.resume().catch(() => undefined);
  }
  return { pausedMs: Date.now() - pausedAt };
}

/** How a restored VM gets its memory. */
export type MemoryBackend =
  | { kind: 'file'; path: string }
  /** Firecracker Uffd backend: path of the page server's Unix socket. */
  | { kind: 'uffd'; socketPath: string };

/** Everything needed to start a VM from a snapshot, with per-clone overrides. */
export interface RestoreSpec {
  id: string;
  runDir: string;
  snapshot: SnapshotFiles;
  memory: MemoryBackend;
  /** The original boot spec of the snapshotted VM (shape, kernel, accel); drives/net may be overridden below. */
  source: VmSpec;
  /** Per-clone disks, same ids and order as source.drives. */
  drives: DriveSpec[];
  net?: NetSpec;
  consoleLog: string;
  /** Resume the vCPUs right after loading (default true). */
  resume?: boolean;
}

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A running (or paused) VM. */
export interface VmHandle {
  readonly kind: VmmKind;
  readonly pid: number;
  /** Resolves when the VMM process has exited. */
  readonly exited: Promise<VmExit>;
  /**
   * Opens a fresh byte stream to the guest agent (virtio-serial chardev on
   * QEMU, hybrid vsock CONNECT on Firecracker). Rejects after timeoutMs.
   */
  connectAgent(timeoutMs: number): Promise<Duplex>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /**
   * How many times the VMM has cut the agent stream so far (Firecracker publishes a vsock
   * TRANSPORT_RESET when a snapshot saves device state); undefined where it never does (QEMU).
   * A snapshot after which it moved needs a fresh connection; one that failed before the cut
   * (say, a memory copy before the pause) goes on on the old stream, with its channels.
   */
  readonly agentLinkResets?: number;
  /** Writes a snapshot of a paused VM. */
  snapshot(files: SnapshotFiles, kind: SnapshotKind): Promise<void>;
  /**
   * Snapshots the running VM into files, whatever its origin (booted, or restored from a
   * snapshot): its vCPUs are stopped at the snapshot point, `whilePaused` runs then (the disk
   * copy), and the VM runs again when this resolves, also on failure. A VMM may copy memory
   * live before it stops the vCPUs where its dirty tracking is sound (QEMU under TCG is not:
   * it copies a VM whose RAM is a private mapping with the vCPUs stopped).
   */
  snapshotRunning(files: SnapshotFiles, options: RunningSnapshotOptions): Promise<RunningSnapshotTimings>;
  /** Asks the guest to power off; kills the VMM after timeoutMs. */
  shutdown(timeoutMs: number): Promise<VmExit>;
  /** SIGKILL the VMM, immediately. */
  kill(): void;
}

export interface VmmBackend {
  readonly kind: VmmKind;
  /** What this VMM can and needs, by name (kernel image, command line, networking, snapshot features). */
  readonly traits: VmmTraits;
  /**
   * Whether the VMM creates a host TAP it is given by name (QEMU does, as a device that goes
   * with its process). Otherwise the caller creates the TAP first, as Firecracker expects.
   */
  readonly createsTap: boolean;
  /** Human-readable reason when this backend cannot run here, or null when it can. */
  unavailableReason(): Promise<string | null>;
  boot(spec: VmSpec): Promise<VmHandle>;
  restore(spec: RestoreSpec): Promise<VmHandle>;
}
