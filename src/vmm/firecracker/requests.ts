/**
 * Pure builders: shoal's VMM types -> the exact Firecracker API requests
 * (method, path, JSON body). Nothing here does I/O, so the contract tests
 * can enumerate every body for every configuration and validate it against
 * Firecracker's own OpenAPI description (firecracker.yaml, v1.16.1).
 *
 * Firecracker's request types are `deny_unknown_fields`: a single field the
 * running binary does not know fails the whole request. Fields that newer
 * releases added are therefore gated on the version reported by GET /version.
 */
import path from 'node:path';
import type { DriveSpec, NetSpec, RestoreSpec, SnapshotFiles, SnapshotKind, VmSpec } from '../backend';
import { ShoalError } from '../../util/errors';

export type HttpMethod = 'GET' | 'PUT' | 'PATCH';

export interface ApiRequest<B = unknown> {
  method: HttpMethod;
  path: string;
  body?: B;
}

// ---------------------------------------------------------------- body types
// Mirrors of the spec's `definitions` (only the fields shoal may send).

export interface BootSourceBody { kernel_image_path: string; boot_args?: string; initrd_path?: string }
export interface MachineConfigBody { vcpu_count: number; mem_size_mib: number; smt?: boolean; track_dirty_pages?: boolean }
export interface DriveBody { drive_id: string; is_root_device: boolean; is_read_only: boolean; path_on_host: string; cache_type?: 'Unsafe' | 'Writeback'; io_engine?: 'Sync' | 'Async' }
export interface PartialDriveBody { drive_id: string; path_on_host: string }
export interface NetworkInterfaceBody { iface_id: string; host_dev_name: string; guest_mac?: string }
export interface VsockBody { guest_cid: number; uds_path: string }
export type EntropyBody = Record<string, never>;
export interface LoggerBody { log_path: string; level?: LogLevel; show_level?: boolean; show_log_origin?: boolean }
export interface MetricsBody { metrics_path: string }
export interface MmdsConfigBody { network_interfaces: string[]; version?: 'V1' | 'V2'; ipv4_address?: string }
export interface InstanceActionBody { action_type: 'InstanceStart' | 'SendCtrlAltDel' | 'FlushMetrics' }
export interface VmStateBody { state: 'Paused' | 'Resumed' }
export interface SnapshotCreateBody { snapshot_path: string; mem_file_path: string; snapshot_type: 'Full' | 'Diff' }
export interface SnapshotLoadBody {
  snapshot_path: string;
  mem_backend: { backend_type: 'File' | 'Uffd'; backend_path: string };
  track_dirty_pages?: boolean;
  resume_vm?: boolean;
  network_overrides?: Array<{ iface_id: string; host_dev_name: string }>;
  vsock_override?: { uds_path: string };
}

/** Responses shoal parses. */
export interface InstanceInfo { app_name: string; id: string; state: 'Not started' | 'Running' | 'Paused'; vmm_version: string }
export interface FirecrackerVersionBody { firecracker_version: string }

export type LogLevel = 'Error' | 'Warning' | 'Info' | 'Debug' | 'Trace' | 'Off';

// ---------------------------------------------------------------- constants

/** The guest agent's AF_VSOCK port, defined with the transport both ends share. */
export { AGENT_VSOCK_PORT } from '../../protocol/transport';
/** Guest CID; any value >= 3 (the spec's minimum). Each VM has its own vsock UDS, so all can share it. */
export const GUEST_CID = 3;
/** Interface id of the one guest NIC. */
export const NET_IFACE_ID = 'eth0';
/** Firecracker's vCPU limit (MachineConfiguration.vcpu_count maximum). */
export const MAX_VCPUS = 32;

// ---------------------------------------------------------------- versions

export interface Version { major: number; minor: number; patch: number }

/** Parses "1.16.1", "v1.16.1", "Firecracker v1.16.1" or "1.16.0-dev" (pre-releases count as their release). */
export function parseVersion(text: string): Version {
  const m = /(\d+)\.(\d+)\.(\d+)/.exec(text);
  if (!m) throw new ShoalError(`cannot parse a Firecracker version from ${JSON.stringify(text)}`);
  return { major: Number(m[1]), minor: Number(m[2]), patch: Number(m[3]) };
}

export function versionAtLeast(v: Version, min: string): boolean {
  const w = parseVersion(min);
  if (v.major !== w.major) return v.major > w.major;
  if (v.minor !== w.minor) return v.minor > w.minor;
  return v.patch >= w.patch;
}

export function formatVersion(v: Version): string {
  return `${v.major}.${v.minor}.${v.patch}`;
}

/**
 * First release accepting each optional /snapshot/load field shoal uses.
 * All are present in the v1.16.1 spec; the versions they appeared in come
 * from Firecracker's changelog / PRs (#4731 network_overrides, #5323
 * vsock_override), see docs/firecracker.md. `track_dirty_pages` on the load
 * replaced `enable_diff_snapshots` in 1.13.0 (commit 9e06b59, "rename
 * enable_diff_snapshots API paramter to track_dirty_pages"; LoadSnapshotConfig
 * in src/vmm/src/vmm_config/snapshot.rs is deny_unknown_fields before and after).
 */
export const FEATURE_MIN_VERSION = {
  networkOverrides: '1.12.0',
  vsockOverride: '1.16.0',
  trackDirtyPagesOnLoad: '1.13.0',
} as const;

export interface Features { networkOverrides: boolean; vsockOverride: boolean; trackDirtyPagesOnLoad: boolean }

export function featuresOf(v: Version): Features {
  return {
    networkOverrides: versionAtLeast(v, FEATURE_MIN_VERSION.networkOverrides),
    vsockOverride: versionAtLeast(v, FEATURE_MIN_VERSION.vsockOverride),
    trackDirtyPagesOnLoad: versionAtLeast(v, FEATURE_MIN_VERSION.trackDirtyPagesOnLoad),
  };
}

// ---------------------------------------------------------------- paths

/** Where shoal puts a VM's Firecracker files inside its runDir. */
export function runFiles(runDir: string): { apiSocket: string; vsock: string; log: string; metrics: string } {
  return {
    apiSocket: path.join(runDir, 'fc.sock'),
    vsock: path.join(runDir, 'vsock.sock'),
    log: path.join(runDir, 'firecracker.log'),
    metrics: path.join(runDir, 'firecracker.metrics'),
  };
}

// ---------------------------------------------------------------- builders

export function bootSource(spec: Pick<VmSpec, 'kernel' | 'initrd' | 'cmdline'>): ApiRequest<BootSourceBody> {
  const body: BootSourceBody = { kernel_image_path: spec.kernel, boot_args: spec.cmdline };
  if (spec.initrd) body.initrd_path = spec.initrd;
  return { method: 'PUT', path: '/boot-source', body };
}

export function machineConfig(spec: Pick<VmSpec, 'cpus' | 'memoryMiB'>, opts: { trackDirtyPages?: boolean } = {}): ApiRequest<MachineConfigBody> {
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1 || spec.cpus > MAX_VCPUS) {
    throw new ShoalError(`Firecracker supports 1 to ${MAX_VCPUS} vCPUs, not ${spec.cpus}`);
  }
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 1) {
    throw new ShoalError(`memory must be a whole number of MiB, not ${spec.memoryMiB}`);
  }
  const body: MachineConfigBody = { vcpu_count: spec.cpus, mem_size_mib: spec.memoryMiB, smt: false };
  if (opts.trackDirtyPages) body.track_dirty_pages = true;
  return { method: 'PUT', path: '/machine-config', body };
}

/**
 * Firecracker's API accepts a device id only when every character is `_` or alphanumeric
 * (v1.16.1 src/firecracker/src/api_server/parsed_request.rs, checked_id); a `-` is refused.
 * shoal keeps to ASCII and 64 characters on top of that.
 */
const ID_RE = /^[A-Za-z0-9_]{1,64}$/;

function checkId(kind: string, id: string): void {
  if (!ID_RE.test(id)) throw new ShoalError(`invalid Firecracker ${kind} id ${JSON.stringify(id)} (letters, digits and _ only)`);
}

/**
 * A virtio-block drive. shoal boots from its initramfs, which mounts vda/vdb
 * itself, so no drive is Firecracker's "root device" unless there is no
 * initrd (then the first drive is, and the cmdline must say root=/dev/vda).
 */
export function drive(d: DriveSpec, opts: { isRoot?: boolean } = {}): ApiRequest<DriveBody> {
  checkId('drive', d.id);
  return {
    method: 'PUT',
    path: `/drives/${d.id}`,
    body: {
      drive_id: d.id,
      is_root_device: opts.isRoot ?? false,
      is_read_only: d.readOnly,
      path_on_host: d.path,
      cache_type: 'Unsafe',
      io_engine: 'Sync',
    },
  };
}

/** Post-boot (or post-load, before resume) change of a drive's backing file. */
export function patchDrive(id: string, pathOnHost: string): ApiRequest<PartialDriveBody> {
  checkId('drive', id);
  return { method: 'PATCH', path: `/drives/${id}`, body: { drive_id: id, path_on_host: pathOnHost } };
}

export function networkInterface(net: NetSpec, ifaceId = NET_IFACE_ID): ApiRequest<NetworkInterfaceBody> {
  checkId('network interface', ifaceId);
  if (net.userMode) {
    throw new ShoalError('Firecracker has no user-mode (slirp) networking; use a TAP device or --vmm qemu');
  }
  if (!net.tap) throw new ShoalError('Firecracker networking needs a host TAP device name');
  return {
    method: 'PUT',
    path: `/network-interfaces/${ifaceId}`,
    body: { iface_id: ifaceId, host_dev_name: net.tap, guest_mac: net.mac },
  };
}

export function vsock(udsPath: string, guestCid = GUEST_CID): ApiRequest<VsockBody> {
  return { method: 'PUT', path: '/vsock', body: { guest_cid: guestCid, uds_path: udsPath } };
}

/** virtio-rng, so the guest's entropy pool fills quickly (podman, TLS). */
export function entropy(): ApiRequest<EntropyBody> {
  return { method: 'PUT', path: '/entropy', body: {} };
}

/** Firecracker opens (and creates, O_CREAT) the file at this request (v1.16.1 utils::open_file_nonblock). */
export function logger(logPath: string, level: LogLevel = 'Warning'): ApiRequest<LoggerBody> {
  return { method: 'PUT', path: '/logger', body: { log_path: logPath, level, show_level: true, show_log_origin: false } };
}

/** Firecracker opens (and creates, O_CREAT) the file at this request (v1.16.1 utils::open_file_nonblock). */
export function metrics(metricsPath: string): ApiRequest<MetricsBody> {
  return { method: 'PUT', path: '/metrics', body: { metrics_path: metricsPath } };
}

/** MMDS (V2, token-protected) on the given interfaces; pre-boot only, needs a network interface. */
export function mmdsConfig(ifaceIds: string[] = [NET_IFACE_ID]): ApiRequest<MmdsConfigBody> {
  return { method: 'PUT', path: '/mmds/config', body: { network_interfaces: ifaceIds, version: 'V2' } };
}

export function mmdsContents(data: Record<string, unknown>): ApiRequest<Record<string, unknown>> {
  return { method: 'PUT', path: '/mmds', body: data };
}

export function action(action_type: InstanceActionBody['action_type']): ApiRequest<InstanceActionBody> {
  return { method: 'PUT', path: '/actions', body: { action_type } };
}

export const instanceStart = (): ApiRequest<InstanceActionBody> => action('InstanceStart');
/** x86_64 only: a keyboard Ctrl+Alt+Del through the emulated i8042. */
export const sendCtrlAltDel = (): ApiRequest<InstanceActionBody> => action('SendCtrlAltDel');

export function pauseVm(): ApiRequest<VmStateBody> {
  return { method: 'PATCH', path: '/vm', body: { state: 'Paused' } };
}

export function resumeVm(): ApiRequest<VmStateBody> {
  return { method: 'PATCH', path: '/vm', body: { state: 'Resumed' } };
}

export function snapshotCreate(files: SnapshotFiles, kind: SnapshotKind): ApiRequest<SnapshotCreateBody> {
  return {
    method: 'PUT',
    path: '/snapshot/create',
    body: { snapshot_path: files.stateFile, mem_file_path: files.memoryFile, snapshot_type: kind === 'diff' ? 'Diff' : 'Full' },
  };
}

export const getVersion = (): ApiRequest => ({ method: 'GET', path: '/version' });
export const describeInstance = (): ApiRequest => ({ method: 'GET', path: '/' });

// ---------------------------------------------------------------- sequences

export interface BootOptions {
  /** Host-side vsock UDS as Firecracker should see it (runFiles().vsock, or the in-jail path). */
  vsockPath: string;
  logPath?: string;
  logLevel?: LogLevel;
  metricsPath?: string;
  /** Needed for diff snapshots of this VM (costs some KVM bookkeeping). */
  trackDirtyPages?: boolean;
  /** Attach virtio-rng (default true). */
  entropy?: boolean;
  /** Configure MMDS on the NIC (only with a network). */
  mmds?: boolean;
}

/** Every request of a cold boot, in order, ending with InstanceStart. */
export function bootSequence(spec: VmSpec, opts: BootOptions): ApiRequest[] {
  const reqs: ApiRequest[] = [];
  if (opts.logPath) reqs.push(logger(opts.logPath, opts.logLevel));
  if (opts.metricsPath) reqs.push(metrics(opts.metricsPath));
  reqs.push(machineConfig(spec, { trackDirtyPages: opts.trackDirtyPages }));
  reqs.push(bootSource(spec));
  spec.drives.forEach((d, i) => reqs.push(drive(d, { isRoot: !spec.initrd && i === 0 })));
  if (spec.net) {
    reqs.push(networkInterface(spec.net));
    if (opts.mmds) reqs.push(mmdsConfig([NET_IFACE_ID]));
  }
  reqs.push(vsock(opts.vsockPath));
  if (opts.entropy ?? true) reqs.push(entropy());
  reqs.push(instanceStart());
  return reqs;
}

export interface RestoreOptions {
  /** Version of the Firecracker binary doing the load (GET /version). */
  version: Version;
  /** The new VM's vsock UDS as Firecracker should see it. */
  vsockPath: string;
  /** The vsock UDS path recorded in the snapshot (the source VM's). */
  sourceVsockPath: string;
  /** Memory backend path as Firecracker should see it (defaults to spec.memory's). */
  memoryPath?: string;
  snapshotPath?: string;
  logPath?: string;
  logLevel?: LogLevel;
  metricsPath?: string;
  /** KVM dirty-page tracking for the restored VM, so its snapshots can be Diffs (needs >= 1.13.0). */
  trackDirtyPages?: boolean;
}

/**
 * Every request of a restore, in order: logger/metrics (the only things
 * allowed before a load), PUT /snapshot/load, then per-clone disk swaps
 * (PATCH /drives while still paused) and finally the resume.
 *
 * When a clone needs a different TAP or vsock socket than the snapshot
 * recorded, the load must carry network_overrides / vsock_override; on a
 * binary too old for those fields this throws a ShoalError naming the
 * version needed, instead of letting Firecracker reject the body.
 */
export function restoreSequence(spec: RestoreSpec, opts: RestoreOptions): ApiRequest[] {
  const feats = featuresOf(opts.version);
  const reqs: ApiRequest[] = [];
  if (opts.logPath) reqs.push(logger(opts.logPath, opts.logLevel));
  if (opts.metricsPath) reqs.push(metrics(opts.metricsPath));

  const memoryPath = opts.memoryPath ?? (spec.memory.kind === 'file' ? spec.memory.path : spec.memory.socketPath);
  const body: SnapshotLoadBody = {
    snapshot_path: opts.snapshotPath ?? spec.snapshot.stateFile,
    mem_backend: { backend_type: spec.memory.kind === 'file' ? 'File' : 'Uffd', backend_path: memoryPath },
    // Resume only after the disks are swapped below.
    resume_vm: false,
  };
  // Network: the snapshot holds the source's NIC (and TAP name).
  const srcNet = spec.source.net;
  if (spec.net && !srcNet) throw new ShoalError('cannot add a network interface when restoring a snapshot taken without one');
  if (srcNet && spec.net) {
    if (spec.net.userMode) throw new ShoalError('Firecracker has no user-mode (slirp) networking');
    if (!spec.net.tap) throw new ShoalError('Firecracker networking needs a host TAP device name');
    // The MAC is device state (net persist.rs: config_space.guest_mac) and network_overrides
    // carries only iface_id and host_dev_name, so the device keeps the snapshot's MAC whatever
    // spec.net.mac says; a clone that needs its own MAC (bridged) takes it inside the guest.
    if (spec.net.tap !== srcNet.tap) {
      if (!feats.networkOverrides) {
        throw new ShoalError(`restoring onto a different TAP (${spec.net.tap}) needs Firecracker >= ${FEATURE_MIN_VERSION.networkOverrides} (network_overrides); this one is ${formatVersion(opts.version)}`);
      }
      body.network_overrides = [{ iface_id: NET_IFACE_ID, host_dev_name: spec.net.tap }];
    }
  }

  // vsock: the snapshot holds the source's uds_path.
  if (opts.vsockPath !== opts.sourceVsockPath) {
    if (!feats.vsockOverride) {
      throw new ShoalError(`restoring with a new vsock socket (${opts.vsockPath}) needs Firecracker >= ${FEATURE_MIN_VERSION.vsockOverride} (vsock_override); this one is ${formatVersion(opts.version)}`);
    }
    body.vsock_override = { uds_path: opts.vsockPath };
  }

  if (opts.trackDirtyPages) {
    if (!feats.trackDirtyPagesOnLoad) {
      throw new ShoalError(`dirty-page tracking on a restored VM needs Firecracker >= ${FEATURE_MIN_VERSION.trackDirtyPagesOnLoad} (track_dirty_pages); this one is ${formatVersion(opts.version)}`);
    }
    body.track_dirty_pages = true;
  }
  reqs.push({ method: 'PUT', path: '/snapshot/load', body });

  // Disks: Firecracker reopens the snapshot's paths on load; swap each clone disk in before resuming.
  const src = new Map(spec.source.drives.map((d) => [d.id, d]));
  for (const d of spec.drives) {
    const s = src.get(d.id);
    if (!s) throw new ShoalError(`drive ${d.id} is not in the snapshot (it has ${[...src.keys()].join(', ') || 'none'})`);
    if (s.readOnly !== d.readOnly) throw new ShoalError(`drive ${d.id} cannot change between read-only and read-write on restore`);
    if (s.path !== d.path) reqs.push(patchDrive(d.id, d.path));
  }
  if (spec.resume ?? true) reqs.push(resumeVm());
  return reqs;
}
