/**
 * The record of one VM, kept in <state>/vms/<id>/state.json and rewritten atomically by its
 * supervisor (the only writer while it lives). Readers derive liveness from the supervisor's
 * pid and start time, so a VM whose supervisor was killed shows as dead, never as running.
 */
import type { ContainerOptions } from '../container/container-options';
import type { ImageSource } from '../container/image-ref';
import type { DirectoryMap } from '../container/map-spec';
import type { TerminalSize } from '../protocol/messages';
import type { Accelerator, PortForward, VmmKind } from '../vmm/backend';
import type { JailerChoice } from '../vmm/select';

/** The namespace interface a `--network ns:PATH` VM takes over (its fields are the kernel's). */
export interface NetnsInterface {
  name: string;
  mac: string;
  address: string;
  prefixLength: number;
  gateway: string | null;
  mtu: number;
}

export type RecordedState = 'creating' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';
export type VmStatus = 'creating' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed' | 'dead';

/** `--network`: how the VM reaches the network (src/network/ implements each). */
export type NetworkMode = 'rootless' | 'slirp4netns' | 'bridged' | 'ns' | 'none';

export interface VmConfig {
  name: string;
  /** What the user typed. */
  image: string;
  /**
   * The image as parsed once, by the CLI, where the user typed it (an archive's path resolved
   * against the CLI's working directory). Absent in records of older shoal versions.
   */
  source?: ImageSource;
  /** The command to run in the container (empty: the image's default). */
  command: string[];
  env: Record<string, string>;
  cpus: number;
  memoryMiB: number;
  interactive: boolean;
  /** Run the container on a terminal (-t) of this initial size; absent: plain pipes. */
  tty?: TerminalSize;
  detach: boolean;
  /** Remove everything when the container exits. */
  autoRemove: boolean;
  network: NetworkMode;
  /**
   * `--network slirp4netns:allow_host_loopback=true` (or rootless on Firecracker): the guest may
   * reach the host's loopback as 10.0.2.2. Absent: it may not (QEMU's own slirp always lets it).
   */
  allowHostLoopback?: boolean;
  /** `--network ns:PATH`: the network namespace the VM joins (a CNI pod's), src/network/netns-attach.ts. */
  netnsPath?: string;
  publish: PortForward[];
  /** Host directories shown to the container over FUSE (--map). */
  maps?: DirectoryMap[];
  /** An http(s) URL polled in the guest; once it answers, the running app is snapshotted (startup snapshot). */
  healthCheck?: string;
  /** Run Firecracker under its jailer (--jailer). */
  jailer?: JailerChoice;
  /** The podman flags that shape the container (--user, --workdir, --privileged, ...); absent: none given. */
  container?: ContainerOptions;
  /** Use the automatic image cache (false with --no-snapshot). */
  imageCache?: boolean;
}

export interface VmRecord {
  id: string;
  config: VmConfig;
  backend: VmmKind;
  accel: Accelerator;
  state: RecordedState;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
  supervisorPid?: number;
  supervisorStartTime?: string;
  /**
   * The `shoal` process that wrote the record in state `creating`, before a supervisor exists:
   * if it dies before spawning one, the VM shows as dead instead of `creating` forever.
   */
  creatorPid?: number;
  creatorStartTime?: string;
  vmmPid?: number;
  /** The image reference inside the guest after loading/pulling. */
  loadedImage?: string;
  exitCode?: number;
  error?: string;
  /** `--network ns:PATH`: the namespace's interface whose MAC and address the guest took. */
  netnsInterface?: NetnsInterface;
  /** A bridged VM's address on the shoal0 subnet. */
  bridgedAddress?: string;
  /**
   * A jailed VM's jail directory, recorded before the jailer makes it: `rm` removes this one,
   * whatever Firecracker binary is installed by then (the jail is named after the binary).
   */
  jailDir?: string;
  /** Whether this VM was restored from the image cache (hit) or booted and saved it (miss). */
  imageCache?: { key: string; hit: boolean; startup?: boolean };
  /** The startup snapshot this run saved once its --health-check passed. */
  startupSnapshot?: string;
  /**
   * The snapshot this VM was restored from (a clone, a fork child, an image-cache hit, a
   * startup-snapshot run): its lineage, and what `snapshot rm` checks for live clones.
   */
  restoredFrom?: SnapshotRef;
}

/** A snapshot by tag and, for snapshots that have one, the id that tells apart two snapshots that had the same tag. */
export interface SnapshotRef {
  tag: string;
  id?: string;
}

export const NAME_PATTERN = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
export const NAME_MAX = 63;

/** Returns a one-line problem with the name, or undefined when it is valid. */
export function nameProblem(name: string): string | undefined {
  if (name.length === 0) return 'name is empty';
  if (name.length > NAME_MAX) return `name is longer than ${NAME_MAX} characters`;
  if (name.includes('/')) return `name "${name}" contains a path separator`;
  if (!NAME_PATTERN.test(name)) return `name "${name}" must match ${NAME_PATTERN.source}`;
  return undefined;
}
