/**
 * FirecrackerBackend: VmmBackend over Firecracker's REST API.
 *
 * boot:    spawn `firecracker --api-sock <runDir>/fc.sock --id <id>` (under
 *          `setpriv --pdeathsig KILL`), wait for the socket, GET /version,
 *          configure (logger, metrics, machine, boot source, drives, NIC,
 *          vsock, entropy), PUT /actions InstanceStart.
 * restore: spawn, GET /version, logger/metrics, PUT /snapshot/load (paused),
 *          PATCH /drives for per-clone disks, PATCH /vm Resumed.
 * handle:  agent stream = hybrid vsock CONNECT 1024 on <runDir>/vsock.sock;
 *          pause/resume = PATCH /vm; snapshot = PUT /snapshot/create (of a restored VM: a Diff
 *          merged onto a copy of the memory it was restored from, see diff-base.ts);
 *          shutdown = SendCtrlAltDel (x86_64 only) then SIGKILL after the timeout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Duplex } from 'node:stream';
import { pauseAndSnapshot, type NetSpec, type RestoreSpec, type RunningSnapshotOptions, type RunningSnapshotTimings, type SnapshotFiles, type SnapshotKind, type VmExit, type VmHandle, type VmmBackend, type VmSpec } from '../backend';
import { isExecutable, searchPath } from '../../util/which';
import { vmmTraits } from '../traits';
import { ShoalError } from '../../util/errors';
import { FirecrackerApiClient, FirecrackerApiError, waitForSocket } from './api-client';
import { DiffBase } from './diff-base';
import { connectHybridVsock, VsockConnectError } from './hybrid-vsock';
import { installedPaths, releaseArch } from './install';
import type { JailerOptions } from './jailer';
import { jailedLaunch, plainLaunch, type Launch } from './launch';
import { checkKeptDrives, placeStandIns } from './stand-ins';
import { hasSysPtrace, uffdAccessProblem } from './uffd-access';
import {
  AGENT_VSOCK_PORT,
  bootSequence,
  featuresOf,
  formatVersion,
  parseVersion,
  pauseVm,
  versionAtLeast,
  restoreSequence,
  resumeVm,
  runFiles,
  sendCtrlAltDel,
  snapshotCreate,
  type ApiRequest,
  type LogLevel,
  type Version,
} from './requests';

export interface FirecrackerBackendOptions {
  /** Configured path of the firecracker binary (e.g. from `--firecracker PATH`). */
  binary?: string;
  /** Environment to read SHOAL_FIRECRACKER and PATH from (default process.env). */
  env?: NodeJS.ProcessEnv;
  /** Cache root searched for a `shoal setup` install (default util/paths cacheDir()). */
  cacheDir?: string;
  /** Default /dev/kvm. */
  kvmDevice?: string;
  /** The KVM boot probe (src/assets); absent means "not probed". */
  kvmUsable?: () => Promise<boolean>;
  /** setpriv binary for --pdeathsig, or false to spawn directly. Default: `setpriv` from PATH if present. */
  setpriv?: string | false;
  /** Run under the jailer (`--jailer`). */
  jailer?: Omit<JailerOptions, 'id' | 'firecrackerBinary'>;
  /** How long to wait for the API socket after spawning (default 5 s). */
  startTimeoutMs?: number;
  /** Per-request API timeout (default 10 s); snapshot create/load get max(this, 120 s). */
  apiTimeoutMs?: number;
  logLevel?: LogLevel;
  /** Configure /metrics (default true). */
  metrics?: boolean;
  /**
   * KVM dirty-page tracking, which lets a VM's snapshots be Diffs merged onto the memory file of
   * its last snapshot or restore. Default: on for a restored VM (where Firecracker supports it
   * on the load, >= 1.13.0), off for a booted one. Booted with it, a VM's first snapshot is Full
   * and the next ones Diffs.
   */
  trackDirtyPages?: boolean;
  /** Attach virtio-rng (default true). */
  entropy?: boolean;
  /** Node arch, for arch-specific behaviour (default process.arch). */
  arch?: string;
}

const SNAPSHOT_TIMEOUT_MS = 120_000;
const MiB = 1024 * 1024;

/** Where the firecracker binary is: configured path, SHOAL_FIRECRACKER, the setup cache, then PATH. */
export function findFirecrackerBinary(opts: Pick<FirecrackerBackendOptions, 'binary' | 'env' | 'cacheDir' | 'arch'> = {}): { path: string | null; tried: string[] } {
  const env = opts.env ?? process.env;
  return firstExecutable('firecracker', [
    ['configured path', opts.binary],
    ['SHOAL_FIRECRACKER', env.SHOAL_FIRECRACKER],
    ['shoal setup cache', setupCachePath('firecracker', opts)],
  ], env.PATH);
}

/**
 * The jailer binary for `--jailer`: SHOAL_JAILER, the one `shoal setup --vmm firecracker`
 * installed beside Firecracker, one next to the Firecracker binary in use, or PATH.
 */
export function findJailerBinary(opts: Pick<FirecrackerBackendOptions, 'binary' | 'env' | 'cacheDir' | 'arch'> = {}): { path: string | null; tried: string[] } {
  const env = opts.env ?? process.env;
  const firecracker = findFirecrackerBinary(opts).path;
  return firstExecutable('jailer', [
    ['SHOAL_JAILER', env.SHOAL_JAILER],
    ['shoal setup cache', setupCachePath('jailer', opts)],
    ['beside firecracker', firecracker ? path.join(path.dirname(firecracker), 'jailer') : undefined],
  ], env.PATH);
}

/** Where `shoal setup --vmm firecracker` puts a binary; undefined on an architecture it does not support. */
function setupCachePath(which: 'firecracker' | 'jailer', opts: Pick<FirecrackerBackendOptions, 'cacheDir' | 'arch'>): string | undefined {
  try {
    return installedPaths(undefined, releaseArch(opts.arch ?? process.arch), opts.cacheDir)[which];
  } catch {
    return undefined;
  }
}

/** The first executable candidate, else `name` on PATH; with every place looked at, for the error message. */
function firstExecutable(name: string, candidates: Array<[label: string, path: string | undefined]>, envPath: string | undefined): { path: string | null; tried: string[] } {
  const tried: string[] = [];
  for (const [label, p] of candidates) {
    if (!p) continue;
    tried.push(`${label} ${p}`);
    if (isExecutable(p)) return { path: p, tried };
  }
  tried.push('PATH');
  return { path: searchPath(name, envPath), tried };
}

function tail(file: string, max = 2000): string {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.slice(-max).trim();
  } catch {
    return '';
  }
}

function exitText(e: VmExit): string {
  return e.signal ? `signal ${e.signal}` : `code ${e.code}`;
}

export class FirecrackerBackend implements VmmBackend {
  readonly kind = 'firecracker' as const;
  /** Firecracker opens an existing TAP (docs/network-setup.md: `ip tuntap add ... mode tap` first). */
  readonly createsTap = false;
  readonly traits = vmmTraits('firecracker');

  constructor(private readonly opts: FirecrackerBackendOptions = {}) {}

  async unavailableReason(): Promise<string | null> {
    const arch = this.opts.arch ?? process.arch;
    if (arch !== 'x64' && arch !== 'arm64') return `Firecracker runs on x86_64 and aarch64 hosts only, not ${arch}.`;
    if (!this.binaryPath()) {
      return 'Firecracker is not installed: no binary at --firecracker, SHOAL_FIRECRACKER, the `shoal setup --vmm firecracker` cache, or on PATH; run `shoal setup --vmm firecracker` or pass --firecracker PATH.';
    }
    if (this.opts.jailer && !isExecutable(this.opts.jailer.jailerBinary)) {
      return `--jailer was given but the jailer binary ${this.opts.jailer.jailerBinary} is not an executable file.`;
    }
    const kvm = this.opts.kvmDevice ?? '/dev/kvm';
    try {
      await fs.promises.access(kvm, fs.constants.R_OK | fs.constants.W_OK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return `${kvm} is missing: Firecracker needs KVM (hardware virtualisation); use --vmm qemu on this machine.`;
      return `${kvm} is not readable and writable by this user (${code}); add the user to the kvm group or use --vmm qemu.`;
    }
    if (this.opts.kvmUsable && !(await this.opts.kvmUsable())) {
      return `${kvm} exists but the KVM boot probe failed (a test VM did not boot); Firecracker cannot run here, use --vmm qemu.`;
    }
    return null;
  }

  private binaryPath(): string | null {
    return findFirecrackerBinary(this.opts).path;
  }

  private setprivPath(): string | false {
    if (this.opts.setpriv !== undefined) return this.opts.setpriv;
    return searchPath('setpriv', (this.opts.env ?? process.env).PATH) ?? false;
  }

  private launch(id: string, runDir: string, net: NetSpec | undefined): Launch {
    const namespacePid = net?.namespacePid;
    const netnsPath = net?.netnsPath;
    const binary = this.binaryPath();
    if (!binary) throw new ShoalError('Firecracker is not installed; run `shoal setup --vmm firecracker` or pass --firecracker PATH');
    const setpriv = this.setprivPath();
    if (this.opts.jailer) {
      if (namespacePid !== undefined || netnsPath !== undefined) throw new ShoalError('a jailed Firecracker cannot join a network namespace; use a host TAP (--network bridged)');
      return jailedLaunch({ jailer: this.opts.jailer, binary, id, setpriv });
    }
    return plainLaunch({ binary, id, runDir, setpriv, ...(namespacePid !== undefined ? { namespacePid } : {}), ...(netnsPath !== undefined ? { netnsPath } : {}) });
  }

  /** Spawns the VMM and returns a connected client; the caller configures it. */
  private async start(id: string, runDir: string, consoleLog: string, launch: Launch): Promise<{ vm: FirecrackerVm; version: Version }> {
    // The launch is planned before anything is spawned (a jail's paths are canonical by then).
    await fs.promises.mkdir(runDir, { recursive: true });
    for (const f of launch.staleFiles) await fs.promises.rm(f, { force: true });
    await fs.promises.mkdir(path.dirname(consoleLog), { recursive: true });
    const stderrFile = path.join(runDir, 'firecracker.stderr');
    const out = fs.openSync(consoleLog, 'a');
    const err = fs.openSync(stderrFile, 'w');
    let child: ChildProcess;
    try {
      // Serial console -> stdout -> consoleLog; Firecracker's own early messages -> stderr file.
      child = spawn(launch.argv[0]!, launch.argv.slice(1), { stdio: ['ignore', out, err], detached: false });
    } finally {
      fs.closeSync(out);
      fs.closeSync(err);
    }
    const vm = new FirecrackerVm(child, new FirecrackerApiClient(launch.apiSocket, { timeoutMs: this.opts.apiTimeoutMs }), launch.vsockHost, stderrFile, this.opts.arch ?? process.arch, this.opts.apiTimeoutMs, { runDir, jailed: launch.jail !== undefined });
    await vm.spawned;
    try {
      await waitForSocket(launch.apiSocket, {
        timeoutMs: this.opts.startTimeoutMs ?? 5000,
        abortReason: () => (vm.exitInfo ? `Firecracker exited (${exitText(vm.exitInfo)}) before opening its API socket: ${tail(stderrFile) || 'no output'}` : null),
      });
      // Firecracker would create them itself (O_CREAT); made here so that, in a jail, they
      // belong to the jail's user from the start.
      for (const f of [launch.logHost, ...(this.opts.metrics ?? true ? [launch.metricsHost] : [])]) {
        await fs.promises.writeFile(f, '', { flag: 'a' });
        if (launch.owner) await fs.promises.chown(f, launch.owner.uid, launch.owner.gid);
      }
      const version = parseVersion(await vm.client.version());
      vm.version = version;
      return { vm, version };
    } catch (e) {
      vm.kill();
      await vm.exited;
      throw this.explain(e, `Firecracker for ${id} failed to start`, stderrFile);
    }
  }

  private explain(e: unknown, what: string, stderrFile: string): Error {
    const msg = e instanceof Error ? e.message : String(e);
    const extra = tail(stderrFile, 500);
    return new ShoalError(`${what}: ${msg}${extra && !msg.includes(extra) ? ` (stderr: ${extra.replace(/\s+/g, ' ')})` : ''}`);
  }

  private async run(vm: FirecrackerVm, reqs: ApiRequest[], what: string): Promise<void> {
    try {
      for (const r of reqs) {
        const slow = r.path.startsWith('/snapshot/');
        await vm.client.send(r, slow ? Math.max(this.opts.apiTimeoutMs ?? 0, SNAPSHOT_TIMEOUT_MS) : undefined);
      }
    } catch (e) {
      vm.kill();
      await vm.exited;
      throw this.explain(e, what, vm.stderrFile);
    }
  }

  async boot(spec: VmSpec): Promise<VmHandle> {
    const launch = this.launch(spec.id, spec.runDir, spec.net);
    const { vm } = await this.start(spec.id, spec.runDir, spec.consoleLog, launch);
    const mapped: VmSpec = {
      ...spec,
      kernel: launch.place(spec.kernel, 'kernel'),
      initrd: spec.initrd ? launch.place(spec.initrd, 'initrd') : undefined,
      drives: spec.drives.map((d) => ({ ...d, path: launch.place(d.path, `drive-${d.id.toLowerCase()}`, !d.readOnly) })),
    };
    await launch.materialise();
    const reqs = bootSequence(mapped, {
      vsockPath: launch.vsockForVmm,
      logPath: launch.logForVmm,
      logLevel: this.opts.logLevel,
      metricsPath: this.opts.metrics ?? true ? launch.metricsForVmm : undefined,
      trackDirtyPages: this.opts.trackDirtyPages,
      entropy: this.opts.entropy,
    });
    await this.run(vm, reqs, `booting ${spec.id} with Firecracker failed`);
    const tracking = this.opts.trackDirtyPages ?? false;
    vm.startDirtyLog(spec.memoryMiB * MiB, tracking, {
      reason: tracking ? 'it was booted cold, so there is no memory file yet for a Diff to be merged onto' : 'it was booted cold without dirty-page tracking',
    });
    return vm;
  }

  async restore(spec: RestoreSpec): Promise<VmHandle> {
    if (this.opts.jailer) {
      // Snapshots of jailed VMs are refused (src/snapshot/create.ts), so no jailed restore exists.
      throw new ShoalError('restoring a snapshot under --jailer is not supported: the snapshot files and sockets would have to be placed in and moved out of the chroot for the jail\'s uid');
    }
    if (spec.memory.kind === 'uffd') {
      const problem = uffdAccessProblem({ privileged: spec.net?.namespacePid === undefined && hasSysPtrace() });
      if (problem) throw new ShoalError(`cannot restore ${spec.id} with Firecracker: ${problem}`);
    }
    const recorded = new Map(spec.source.drives.map((d) => [d.id, d.path]));
    const drives = spec.drives.map((d) => ({ recorded: recorded.get(d.id) ?? d.path, replacement: d.path }));
    checkKeptDrives(drives);
    const launch = this.launch(spec.id, spec.runDir, spec.net);
    const { vm, version } = await this.start(spec.id, spec.runDir, spec.consoleLog, launch);
    const tracking = this.restoreTracking(version);
    let reqs: ApiRequest[];
    let releaseStandIns: () => void;
    // Opened before the load, so it is the very file the VM's memory comes from (File: mapped
    // MAP_PRIVATE; Uffd: the one its page server serves) even if that is removed afterwards.
    let base: DiffBase | { reason: string } = { reason: tracking.reason };
    try {
      if (tracking.on) base = DiffBase.open(spec.memory.kind === 'file' ? spec.memory.path : spec.snapshot.memoryFile, spec.source.memoryMiB * MiB);
      reqs = restoreSequence(spec, {
        version,
        vsockPath: launch.vsockForVmm,
        sourceVsockPath: runFiles(spec.source.runDir).vsock,
        logPath: launch.logForVmm,
        logLevel: this.opts.logLevel,
        metricsPath: this.opts.metrics ?? true ? launch.metricsForVmm : undefined,
        trackDirtyPages: tracking.on,
      });
      // The load opens the snapshot's recorded drive paths before PATCH /drives swaps the clone's
      // in: stand-ins where they are gone, held (and locked) only for the load sequence.
      releaseStandIns = await placeStandIns(drives, path.dirname(path.resolve(spec.runDir)));
    } catch (e) {
      if (base instanceof DiffBase) base.close();
      vm.kill();
      await vm.exited;
      throw e;
    }
    try {
      await this.run(vm, reqs, `restoring ${spec.id} from ${spec.snapshot.stateFile} failed`);
    } catch (e) {
      if (base instanceof DiffBase) base.close();
      throw e;
    } finally {
      releaseStandIns();
    }
    vm.startDirtyLog(spec.source.memoryMiB * MiB, tracking.on, base);
    return vm;
  }

  /**
   * Whether a restored VM is loaded with dirty-page tracking. On by default: any VM may be
   * snapshotted or forked, and with it a snapshot writes only what the VM changed instead of
   * all its memory. Its cost is KVM's: the slot is write-protected and each page's first write
   * after a load or snapshot faults once to be logged (a File-backed clone takes that fault
   * anyway, copy-on-write of its MAP_PRIVATE mapping); a File backend is mapped without huge
   * pages (vstate/memory.rs snapshot_file) and shoal configures none, so none are lost. Without it, a Diff would fall back to mincore(2),
   * which misses swapped-out pages and lists every page of the parent's file in the page cache.
   */
  private restoreTracking(version: Version): { on: boolean; reason: string } {
    if (this.opts.trackDirtyPages === false) return { on: false, reason: 'dirty-page tracking is off' };
    // Asked for explicitly on an older binary: restoreSequence says which version it needs.
    if (this.opts.trackDirtyPages === true || featuresOf(version).trackDirtyPagesOnLoad) return { on: true, reason: '' };
    return { on: false, reason: `Firecracker ${formatVersion(version)} cannot track dirty pages of a restored VM (track_dirty_pages on the load needs >= 1.13.0)` };
  }
}

export class FirecrackerVm implements VmHandle {
  readonly kind = 'firecracker' as const;
  /**
   * `PUT /snapshot/create` resets the vsock transport (v1.16.1 devices/virtio/vsock/device.rs,
   * prepare_save -> send_transport_reset_event): on resume the guest drops every open
   * connection, so the host must connect afresh (listeners survive). Counted in snapshot().
   */
  get agentLinkResets(): number {
    return this.resetsPublished;
  }
  private resetsPublished = 0;
  /** The binary's version (GET /version), once known. */
  version: Version | undefined;
  readonly exited: Promise<VmExit>;
  /** Resolves once the process is running (rejects if it could not be spawned). */
  readonly spawned: Promise<void>;
  exitInfo: VmExit | null = null;

  constructor(
    private readonly child: ChildProcess,
    readonly client: FirecrackerApiClient,
    readonly vsockPath: string,
    readonly stderrFile: string,
    private readonly arch: string,
    private readonly apiTimeoutMs?: number,
    private readonly where: { runDir: string; jailed: boolean } = { runDir: '', jailed: false },
  ) {
    this.exited = new Promise<VmExit>((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
      child.once('error', () => {
        // spawn failure: 'exit' may never come.
        if (!this.exitInfo) {
          this.exitInfo = { code: null, signal: null };
          resolve(this.exitInfo);
        }
      });
    });
    this.spawned = new Promise<void>((resolve, reject) => {
      child.once('spawn', () => resolve());
      child.once('error', (e) => reject(new ShoalError(`cannot start Firecracker: ${e.message}`)));
    });
    void this.exited.then(() => this.dropBase('the VM has exited'));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  async connectAgent(timeoutMs: number): Promise<Duplex> {
    const deadline = Date.now() + timeoutMs;
    let last: Error | null = null;
    for (;;) {
      if (this.exitInfo) throw new ShoalError(`Firecracker exited (${exitText(this.exitInfo)}) before the guest agent answered`);
      const left = deadline - Date.now();
      if (left <= 0) break;
      try {
        return await connectHybridVsock(this.vsockPath, AGENT_VSOCK_PORT, left);
      } catch (e) {
        last = e as Error;
        // Before the guest agent listens, Firecracker refuses (closes) the connection: retry.
        if (!(e instanceof VsockConnectError) || e.reason === 'bad-reply') throw e;
        if (e.reason === 'timeout') break;
      }
      await sleep(Math.min(50, Math.max(0, deadline - Date.now())));
    }
    throw new ShoalError(`the guest agent did not answer on vsock port ${AGENT_VSOCK_PORT} within ${timeoutMs} ms${last ? ` (${last.message})` : ''}`);
  }

  /** Paused since the last resume, and whether a snapshot since then published a vsock reset. */
  private pausedWithoutReset = false;

  async pause(): Promise<void> {
    await this.client.send(pauseVm());
    this.pausedWithoutReset = true;
  }

  /**
   * Resumes the vCPUs. v1.16.x arms its vsock RX gate on every resume (vsock/device.rs kick():
   * pending_event_ack = true), and only the guest's ack of a TRANSPORT_RESET clears it
   * (event_handler.rs handle_evq_event). After a pause with no snapshot (say `/snapshot/create`
   * failed before saving device state) there is no reset to ack: host-to-guest vsock would stall
   * for good (fixed upstream after 1.16.1, commit a34d51c). So first publish a reset with a
   * throw-away snapshot in the run directory; the host then reconnects as after any snapshot.
   */
  async resume(): Promise<void> {
    if (this.pausedWithoutReset && this.rxGateOnBareResume()) await this.publishVsockReset();
    await this.client.send(resumeVm());
    this.pausedWithoutReset = false;
  }

  /**
   * The gate came with 1.16.0 (v1.15.x's kick() has no pending_event_ack) and the fix is in no
   * release up to 1.16.1 (it sits under "Unreleased" for 1.17.0 in CHANGELOG.md).
   */
  private rxGateOnBareResume(): boolean {
    return this.version !== undefined && versionAtLeast(this.version, '1.16.0') && !versionAtLeast(this.version, '1.17.0');
  }

  private async publishVsockReset(): Promise<void> {
    const files = { stateFile: path.join(this.where.runDir, 'vsock-reset.state'), memoryFile: path.join(this.where.runDir, 'vsock-reset.mem') };
    try {
      await this.snapshot(files, 'full');
    } catch (e) {
      // Device state (with the reset) is saved before the files are written: a failure here may
      // still have published it. Otherwise the agent link stays stalled and the caller's
      // reconnect times out with its own message.
      void e;
    } finally {
      for (const f of Object.values(files)) fs.rmSync(f, { force: true });
    }
  }

  /** Guest memory size in bytes (a base must be exactly this long). */
  private memoryBytes = 0;
  /** KVM dirty-page tracking is on for this VM (boot's machine-config or the load's track_dirty_pages). */
  private tracking = false;
  /**
   * What the next Diff is merged onto: the memory as it was when the dirty log was last reset.
   * Null: the next snapshot is Full, for the reason in fullReason.
   */
  private base: DiffBase | null = null;
  private fullReason = 'it was booted cold';
  /** mem_file_path of the last /snapshot/create that succeeded (it reset the dirty log). */
  private lastWritten: string | null = null;

  /** Called by the backend once the VM runs: its memory size, tracking, and its first base (or why there is none). */
  startDirtyLog(memoryBytes: number, tracking: boolean, base: DiffBase | { reason: string }): void {
    this.memoryBytes = memoryBytes;
    this.tracking = tracking;
    if (base instanceof DiffBase) this.base = base;
    else this.fullReason = base.reason;
  }

  private dropBase(reason: string): void {
    this.base?.close();
    this.base = null;
    this.fullReason = reason;
  }

  /**
   * With a base: copy it to files.memoryFile while the VM runs, then pause for device state and
   * a Diff, which Firecracker merges into that copy (v1.16.1 vm.rs snapshot_memory_to_file: an
   * existing file of the memory's size is not truncated, and dump_dirty writes only the pages in
   * the dirty log, each at its own offset). The pause covers the Diff and whilePaused only.
   * Without one: a Full snapshot (the whole memory written while paused). Either way, with
   * tracking on, the file written becomes the next base: the snapshot reset the dirty log.
   * On failure neither file is left behind: a merged copy has the memory's full size and would
   * look complete.
   */
  async snapshotRunning(files: SnapshotFiles, options: RunningSnapshotOptions): Promise<RunningSnapshotTimings> {
    const base = this.base;
    this.lastWritten = null;
    let timings: RunningSnapshotTimings;
    try {
      if (base) {
        options.progress?.('copying the memory base while the VM runs');
        await base.copyTo(files.memoryFile);
      } else {
        options.progress?.(`a Full snapshot: ${this.fullReason}`);
      }
      timings = await pauseAndSnapshot(this, files, options, base ? 'diff' : 'full');
    } catch (e) {
      this.adoptWritten(files.memoryFile);
      for (const f of [files.stateFile, files.memoryFile]) fs.rmSync(f, { force: true });
      throw e;
    }
    this.adoptWritten(files.memoryFile);
    return timings;
  }

  /**
   * After a snapshot that Firecracker completed into memoryFile (whatever failed after it, the
   * disk copy say), that file is the memory as of the dirty log's reset: the next base. Opened
   * before a failure's clean-up removes its name.
   */
  private adoptWritten(memoryFile: string): void {
    if (!this.tracking || this.lastWritten !== memoryFile) return;
    this.lastWritten = null;
    const next = DiffBase.open(memoryFile, this.memoryBytes);
    if (next instanceof DiffBase) {
      this.base?.close();
      this.base = next;
    } else {
      this.dropBase(next.reason);
    }
  }

  async snapshot(files: SnapshotFiles, kind: SnapshotKind): Promise<void> {
    if (this.where.jailed) throw new ShoalError('snapshots of a jailed Firecracker are not supported (its files live in the chroot)');
    // Every snapshot resets the dirty log (Full: reset_dirty_bitmap + reset_dirty; Diff:
    // KVM_GET_DIRTY_LOG clears KVM's log, then reset_dirty), and a failed one may have done so:
    // the current base no longer matches the log. Only snapshotRunning adopts a new one.
    this.dropBase('an earlier snapshot reset the dirty-page log without becoming a base (a failed or throw-away snapshot)');
    this.lastWritten = null;
    try {
      await this.client.send(snapshotCreate(files, kind), Math.max(this.apiTimeoutMs ?? 0, SNAPSHOT_TIMEOUT_MS));
    } catch (e) {
      // A failure after the device state was saved has published the reset already: resume()
      // must not publish another (a second throw-away snapshot, likely failing the same way).
      if (failedAfterDeviceStateSaved(e)) {
        this.pausedWithoutReset = false;
        this.resetsPublished += 1;
      }
      throw e;
    }
    this.lastWritten = files.memoryFile;
    this.pausedWithoutReset = false;
    this.resetsPublished += 1;
  }

  async shutdown(timeoutMs: number): Promise<VmExit> {
    if (this.exitInfo) return this.exitInfo;
    // SendCtrlAltDel exists on x86_64 only (emulated i8042); elsewhere there is no graceful path.
    if (this.arch === 'x64') {
      try {
        await this.client.send(sendCtrlAltDel(), Math.max(1, Math.min(timeoutMs, 2000)));
      } catch {
        /* the process may already be going away; the timeout below decides */
      }
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), timeoutMs);
      });
      const r = await Promise.race([this.exited, timedOut]);
      clearTimeout(timer);
      if (r !== 'timeout') return r;
    }
    this.kill();
    return this.exited;
  }

  kill(): void {
    if (!this.exitInfo && this.child.pid !== undefined) {
      try {
        this.child.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
}

/**
 * Whether a failed `PUT /snapshot/create` got past the saving of device state, where the vsock
 * device publishes its TRANSPORT_RESET (v1.16.1 persist.rs create_snapshot: save_state, whose
 * device_manager.save() runs each device's prepare_save after check_unsnapshottable_devices;
 * then snapshot_state_to_file, then snapshot_memory_to_file). These messages are the Display of
 * the errors that can only come after that point (CreateSnapshotError and MicrovmStateError in
 * persist.rs); anything else (a refusal before the save, a timeout, a lost connection) counts
 * as not published, so resume() publishes one: a second reset is harmless, a missing one
 * stalls the link.
 */
export function failedAfterDeviceStateSaved(error: unknown): boolean {
  if (!(error instanceof FirecrackerApiError)) return false;
  return /Cannot (?:save Vcpu state|save KvmVm state|signal Vcpu|perform \w+ on the (?:snapshot|memory) backing file|serialize the microVM state|write memory file|get dirty bitmap)|Vcpu is in unexpected state/.test(error.faultMessage);
}
