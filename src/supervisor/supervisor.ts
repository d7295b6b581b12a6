/**
 * The supervisor: one detached process per VM, owner of everything the VM has on the host.
 * It boots the VMM (tied to itself by a parent-death signal), holds the agent session, loads
 * the image, runs the main container, keeps the record up to date, and serves the control
 * socket through which CLI processes attach, exec and stop. When the container ends it powers
 * the VM off and removes what the VM no longer needs (all of it with --rm).
 */
import fs from 'node:fs';
import path from 'node:path';
import { loadAssets, type GuestAssets } from '../assets/setup';
import { imageSourceOf, loadedImageFrom } from '../container/image-ref';
import { MAIN_CONTAINER, podmanExec, podmanLoadArgv, podmanPullArgv, podmanRun, podmanWaitRunningArgv } from '../container/podman-argv';
import { execCollect, request } from '../host/exec-client';
import { openAgentSession, type CloneIdentity } from '../host/agent-session';
import { GatedStream } from '../protocol/gate';
import type { Channel, Mux } from '../protocol/mux';
import { readSnapshotDir, snapshotFiles, sweepStale } from '../snapshot/store';
import { readJson } from '../state/atomic';
import type { VmConfig, VmRecord, RecordedState } from '../state/vm-record';
import type { StateStore } from '../state/store';
import { ShoalError } from '../util/errors';
import { processStartTime, sleep } from '../util/process';
import type { RestoreSpec, VmHandle, VmmBackend, VmSpec } from '../vmm/backend';
import type { SnapshotManifest } from '../snapshot/store';
import { capConsoleLog } from './container-log';
import { backendFor, jailDirOf } from '../vmm/select';
import type { FilesRequest } from '../protocol/files';
import { relayChannels } from './relay';
import { waitHealthy } from './health-check';
import { serveDirectoryMaps, type ServedMap } from './directory-maps';
import type { ExecRequest } from '../protocol/messages';
import type { KeptAttachRequest, KeptListRequest } from '../protocol/kept';
import { ControlServer, refuse, sendEvent } from '../control/server';
import type { ExecControlRequest, FilesControlRequest } from '../control/messages';
import { cachedImageSnapshot, leaseSnapshotDir, sweepImageCacheTemps, touchImageCache } from '../snapshot/image-cache';
import { vmKernelCmdline } from './guest-cmdline';
import { VmNetwork } from './vm-network';
import { Attachments } from './attachments';
import { MainContainer } from './main-container';
import { Snapshotter } from './snapshotter';
import { ImageCachePolicy } from './image-cache-policy';
import { VmRecordHandle } from './vm-record-handle';
import { vmmTraits } from '../vmm/traits';
import { createScratchDisk } from './scratch-disk';
import { releaseVmResources } from '../lifecycle/release';
import { createMemoryFile, memoryFilePath, removeOrphanMemoryFiles, restoreInfoPath, vmFiles, type RestoreInfo } from '../state/vm-files';
import { copySparse } from '../util/copy';


/** Boot plus agent start under TCG on a loaded 2-core host stays well inside this. */
const AGENT_TIMEOUT_MS = 120_000;
/** How long an attached `shoal run` has to attach before the container starts anyway. */
const ATTACH_GRACE_MS = 30_000;
const SHUTDOWN_TIMEOUT_MS = 10_000;
/** How often console.log is checked against its cap (src/util/log-limit.ts). */
const CONSOLE_CAP_INTERVAL_MS = 1000;
/** How long an app has, once its container runs, to pass its --health-check. */
const HEALTH_TIMEOUT_MS = 120_000;
/** How long the guest agent has to answer a fresh session after a snapshot reset its link. */
const RELINK_TIMEOUT_MS = 30_000;
/**
 * How long `podman load`/`podman pull` may take in the guest: a large image over a slow link
 * under TCG takes minutes, a hung guest takes forever. (The supervisor's other agent requests
 * have AGENT_CALL_TIMEOUT_MS, src/host/exec-client.ts.)
 */
const IMAGE_TIMEOUT_MS = 20 * 60_000;

export class Supervisor {
  private readonly records: VmRecordHandle;
  private readonly network: VmNetwork;
  private readonly snapshotter: Snapshotter;
  private readonly imageCache: ImageCachePolicy;
  private readonly files: ReturnType<typeof vmFiles>;
  private vm: VmHandle | undefined;
  private agent: Mux | undefined;
  private server: ControlServer | undefined;
  private readonly attachments: Attachments;
  private readonly container: MainContainer;
  /** The --map directories this process serves to the guest over FUSE. */
  private directoryMaps: ServedMap[] = [];
  private stopRequested = false;
  private finished = false;
  /** The write gate on the agent link (held while a snapshot is taken). */
  private gate: GatedStream | undefined;
  /** The boot spec of this VM (for a clone: its source's, with its own scratch disk). */
  private spec: VmSpec | undefined;

  constructor(private readonly store: StateStore, id: string) {
    this.records = new VmRecordHandle(store, id);
    this.files = vmFiles(store.vmDir(id));
    this.attachments = new Attachments(this.records, () => void this.stop());
    this.container = new MainContainer(this.files.containerLog, this.attachments);
    this.attachments.main = this.container;
    this.network = new VmNetwork(this.records, this.files.dir, (message) => this.progress(message));
    this.snapshotter = new Snapshotter(store, this.records, this.files.scratchDisk, {
      parts: () => {
        const { vm, agent, gate } = this;
        return vm && agent && gate ? { vm, agent, gate } : undefined;
      },
      running: () => this.agent?.destroyed === false && this.record.state === 'running' && !this.finished && !this.stopRequested,
      stopping: () => this.stopRequested || this.record.state === 'stopping',
      spec: () => this.spec,
      linkLost: (error) => void this.finish('failed', { error }),
      reconnect: (old) => this.reconnectAgent(old),
    });
    this.imageCache = new ImageCachePolicy(store, this.records, this.snapshotter, {
      bootSpec: () => this.vmSpec(loadAssets()),
      spec: () => this.spec,
      progress: (message) => this.progress(message),
    });
  }

  private get record(): VmRecord {
    return this.records.current;
  }

  async main(): Promise<void> {
    const startTime = processStartTime(process.pid);
    this.setState('starting', (r) => {
      r.supervisorPid = process.pid;
      if (startTime !== undefined) r.supervisorStartTime = startTime;
    });
    process.on('SIGTERM', () => void this.stop());
    process.on('SIGINT', () => void this.stop());
    await this.listen();
    // The VMM appends the guest's serial console to console.log; the guest decides how much.
    setInterval(() => {
      try {
        capConsoleLog(this.files.consoleLog);
      } catch {
        // the VM directory is going away (rm -f)
      }
    }, CONSOLE_CAP_INTERVAL_MS).unref();
    removeOrphanMemoryFiles();
    // A fork or snapshot killed midway leaves its temp directory (a full RAM and disk copy);
    // so does a supervisor killed while saving the image cache.
    sweepStale(this.store);
    sweepImageCacheTemps(this.store);
    let exitCode: number | undefined;
    try {
      const restore = readJson<RestoreInfo>(restoreInfoPath(this.files.dir));
      if (restore) {
        await this.restore(restore);
        exitCode = await this.container.followRestored(this.agent!);
      } else {
        const startup = await this.imageCache.startupKey();
        const cachedStartup = startup ? cachedImageSnapshot(this.store, startup) : undefined;
        if (startup && cachedStartup) {
          // The app as it was once its health check passed: restored, already running.
          touchImageCache(cachedStartup.dir);
          this.records.update((r) => {
            r.imageCache = { key: startup, hit: true, startup: true };
            if (cachedStartup.manifest.loadedImage) r.loadedImage = cachedStartup.manifest.loadedImage;
          });
          const info = { snapshotDir: cachedStartup.dir, tag: 'the startup snapshot' };
          await this.restore(info);
          exitCode = await this.container.followRestored(this.agent!);
        } else {
          // Restored from the image cache or booted, the VM can take its startup snapshot later.
          const image = await this.bootOrRestoreFromImageCache();
          // After the image cache's snapshot: a FUSE mount's state lives in this process, so no
          // snapshot may hold one.
          await this.mountDirectoryMaps();
          if (!this.record.config.detach) await Promise.race([this.attachments.first, sleep(ATTACH_GRACE_MS)]);
          if (startup) void this.saveStartupSnapshotWhenHealthy(startup);
          exitCode = await this.runMainContainer(image);
        }
      }
    } catch (err) {
      if (!this.stopRequested) {
        await this.finish('failed', { error: (err as Error).message });
        return;
      }
    }
    await this.finish('stopped', exitCode === undefined ? {} : { exitCode });
  }

  /**
   * Graceful stop: the container gets SIGTERM through podman, SIGKILL after stop -t, else
   * --stop-timeout, else shoal's 5 seconds; then the VM powers off.
   */
  async stop(timeoutSeconds?: number): Promise<void> {
    if (this.stopRequested) return;
    this.stopRequested = true;
    this.setState('stopping');
    if (this.agent && this.container.current) {
      const grace = timeoutSeconds ?? this.record.config.container?.stopTimeout ?? 5;
      await execCollect(this.agent, { argv: ['podman', 'stop', '--time', String(grace), 'main'] }, undefined, { timeoutMs: (grace + 10) * 1000 }).catch(() => undefined);
    }
    // If the container did not end, or never started, finish from here.
    await sleep(500);
    await this.finish('stopped', {});
  }

  private setState(state: RecordedState, change?: (record: VmRecord) => void): void {
    this.records.setState(state, change);
  }

  private progress(message: string): void {
    this.attachments.progress(message);
  }

  private async boot(): Promise<void> {
    const assets = loadAssets();
    const backend = backendFor(this.record.backend, this.record.accel, this.record.config.jailer);
    this.progress(`booting a ${this.record.backend} microVM (${this.record.accel})`);
    await createScratchDisk(this.files.scratchDisk);
    // Ours before QEMU opens it: 0600, and a file someone planted under the name is refused.
    createMemoryFile(this.record.id);
    await this.network.prepare();
    const spec = this.vmSpec(assets);
    this.spec = spec;
    await this.network.createTapIfNeeded(backend, spec.net);
    const { jailer } = this.record.config;
    const jailDir = jailer ? jailDirOf(this.record.id, jailer) : undefined;
    if (jailDir) this.records.update((r) => { r.jailDir = jailDir; });
    this.vm = await backend.boot(spec);
    await this.network.connectTap(backend, spec.net);
    await this.connectVm(this.vm);
  }

  /**
   * A clone: its own copy of the snapshot's scratch disk, the snapshot's memory mapped private,
   * device state loaded, vCPUs resumed; then a fresh agent session (which reseeds the guest's
   * crng and steps its clock). The container kept running inside the guest.
   */
  private async restore(info: RestoreInfo, options: { announce?: boolean } = {}): Promise<void> {
    const manifest = readSnapshotDir(info.snapshotDir);
    if (!manifest) throw new ShoalError(`snapshot ${info.tag} is gone`);
    // Lineage: what this VM came from (a snapshot of it names that as its parent).
    this.records.update((r) => { r.restoredFrom = { tag: manifest.tag, ...(manifest.id ? { id: manifest.id } : {}) }; });
    const files = snapshotFiles(info.snapshotDir);
    const backend = backendFor(this.record.backend, this.record.accel, this.record.config.jailer);
    // Held until the VMM has mapped the memory file: the image cache's eviction skips it meanwhile.
    const releaseLease = leaseSnapshotDir(info.snapshotDir);
    try {
      await this.restoreFrom(info, manifest, files, backend);
    } finally {
      releaseLease();
    }
    await this.network.connectTap(backend, this.spec!.net);
    // The guest still carries its source's hostname (and, bridged, its MAC and address): its
    // agent takes the clone's before it answers, so the clone runs once the answer is in.
    const network = this.network.cloneIdentity();
    await this.connectVm(this.vm!, { restored: true, hostname: guestHostname(this.record.config), ...(network ? { network } : {}) });
    if (options.announce === false) return;
    this.setState('running', (r) => { r.startedAt = new Date().toISOString(); });
    this.attachments.running();
  }

  private async restoreFrom(info: RestoreInfo, manifest: SnapshotManifest, files: ReturnType<typeof snapshotFiles>, backend: VmmBackend): Promise<void> {
    this.progress(`restoring snapshot ${info.tag} into a ${this.record.backend} microVM (${this.record.accel})`);
    await copySparse(files.scratch, this.files.scratchDisk);
    const drives = manifest.vmSpec.drives.map((d) => (d.id === 'scratch' ? { ...d, path: this.files.scratchDisk } : d));
    this.spec = { ...manifest.vmSpec, id: this.record.id, runDir: this.files.dir, consoleLog: this.files.consoleLog, drives };
    delete this.spec.memoryFile;
    const spec: RestoreSpec = {
      id: this.record.id,
      runDir: this.files.dir,
      snapshot: { stateFile: files.state, memoryFile: files.memory },
      memory: info.uffdSocket ? { kind: 'uffd', socketPath: info.uffdSocket } : { kind: 'file', path: files.memory },
      source: manifest.vmSpec,
      drives,
      consoleLog: this.files.consoleLog,
    };
    // A clone keeps the snapshot's network device (its guest state expects it), attached its own
    // way: its own forwards (QEMU slirp), its own namespace (the same TAP name and address in
    // it), or its own TAP, MAC and address on the bridge (applied by the agent on HELLO).
    if (manifest.vmSpec.net) {
      await this.network.prepare();
      spec.net = this.network.cloneNetSpec(manifest.vmSpec.net);
      this.spec.net = spec.net;
    }
    await this.network.createTapIfNeeded(backend, spec.net);
    this.vm = await backend.restore(spec);
  }

  /**
   * The automatic image cache (src/snapshot/image-cache.ts): restore the snapshot of an earlier
   * run of the same image, command, env and shape, or boot, load the image, and save one.
   * Returns the image reference to run.
   */
  private async bootOrRestoreFromImageCache(): Promise<string> {
    if (!this.imageCache.usable()) {
      await this.boot();
      return this.prepareImage();
    }
    const key = await this.imageCache.key();
    const cached = cachedImageSnapshot(this.store, key);
    if (cached?.manifest.loadedImage) {
      touchImageCache(cached.dir);
      this.records.update((r) => {
        r.imageCache = { key, hit: true };
        r.loadedImage = cached.manifest.loadedImage;
      });
      // Like a clone: the cache's memory is mapped private, shared with every other run restored
      // from it; a snapshot or fork of this VM copies what it changed (src/vmm/qemu/private-snapshot.ts).
      const info = { snapshotDir: cached.dir, tag: 'the image cache' };
      await this.restore(info, { announce: false });
      return cached.manifest.loadedImage;
    }
    this.records.update((r) => { r.imageCache = { key, hit: false }; });
    await this.boot();
    const image = await this.prepareImage();
    await this.imageCache.save(key).catch((err: Error) => this.progress(`the image cache was not saved: ${err.message}`));
    return image;
  }

  /** Once the container runs and its health check passes: snapshot the running app into the cache. */
  private async saveStartupSnapshotWhenHealthy(key: string): Promise<void> {
    const url = this.record.config.healthCheck!;
    const ended = (): boolean => this.finished || this.stopRequested || this.container.current?.closed === true;
    try {
      while (this.record.state !== 'running') {
        if (ended()) return;
        await sleep(200);
      }
      this.progress(`waiting for the health check ${url}`);
      await waitHealthy(this.agent!, url, HEALTH_TIMEOUT_MS, ended);
      this.progress('health check passed: saving the startup snapshot');
      await this.imageCache.save(key, 'startup');
      this.records.update((r) => { r.startupSnapshot = key; });
      this.progress('startup snapshot saved: later runs start from here');
    } catch (err) {
      if (!ended()) this.progress(`no startup snapshot: ${(err as Error).message}`);
    }
  }

  private async connectVm(vm: VmHandle, clone: CloneIdentity = {}): Promise<void> {
    this.setState('starting', (r) => { r.vmmPid = vm.pid; });
    void vm.exited.then((exit) => {
      if (!this.finished && !this.stopRequested) {
        void this.finish('failed', { error: `the VM exited unexpectedly (${exit.signal ?? `code ${exit.code}`}); see \`shoal logs --console ${this.record.config.name}\`` });
      }
    });
    await this.openSession(vm, AGENT_TIMEOUT_MS, clone);
  }

  /** An agent session on a new connection; losing it ends the VM, unless a newer one replaced it. */
  private async openSession(vm: VmHandle, timeoutMs: number, clone: CloneIdentity = {}): Promise<Mux> {
    // The agent link runs through a write gate, so a snapshot can hold the host's frames.
    const gated = Object.create(vm) as VmHandle;
    gated.connectAgent = async (ms: number) => {
      this.gate = new GatedStream(await vm.connectAgent(ms));
      return this.gate;
    };
    const agent = await openAgentSession(gated, timeoutMs, clone);
    this.agent = agent;
    agent.on('close', () => {
      if (this.agent !== agent) return;
      if (this.finished || (this.stopRequested && agent.protocolError === undefined)) return;
      // A guest that broke the protocol gets its VM ended: nothing it sends is trusted after that.
      const error = agent.protocolError === undefined ? 'lost the connection to the guest agent' : `the guest broke the agent protocol (${agent.protocolError}); the VM was stopped`;
      void this.finish('failed', { error });
    });
    return agent;
  }

  /**
   * After a snapshot on a VMM that resets the agent stream (Firecracker's vsock TRANSPORT_RESET):
   * the old stream is dead in the guest, so drop it and start a fresh session on a new connection.
   * The guest keeps the main container running (a persistent exec), which MainContainer takes
   * over again; channels of the old session (execs in flight) end with it.
   */
  private async reconnectAgent(old: Mux): Promise<void> {
    this.agent = undefined; // so the old session's close is not taken for a lost VM
    const ready = this.openSession(this.vm!, RELINK_TIMEOUT_MS);
    this.container.relink = { from: old, ready };
    old.destroy();
    try {
      await ready;
    } catch (err) {
      void this.finish('failed', { error: `the guest agent did not answer after a snapshot: ${(err as Error).message}` });
      throw new ShoalError('the guest agent did not answer after the snapshot');
    }
  }

  private vmSpec(assets: GuestAssets): VmSpec {
    const { config } = this.record;
    const net = this.network.netSpec();
    return {
      id: this.record.id,
      runDir: this.files.dir,
      kernel: assets[vmmTraits(this.record.backend).kernelImage],
      initrd: assets.initrd,
      cmdline: vmKernelCmdline(assets.cmdline, vmmTraits(this.record.backend), guestHostname(config), this.network.attachment, this.network.staticAddress()),
      cpus: config.cpus,
      memoryMiB: config.memoryMiB,
      drives: [
        { id: 'root', path: assets.rootfs, readOnly: true },
        { id: 'scratch', path: this.files.scratchDisk, readOnly: false },
      ],
      accel: this.record.accel,
      ...(this.record.accel === 'kvm' && assets.kvmCpuFlags ? { kvmCpuFlags: assets.kvmCpuFlags } : {}),
      consoleLog: this.files.consoleLog,
      memoryFile: memoryFilePath(this.record.id),
      ...(net ? { net } : {}),
    };
  }

  /** Brings the image into the guest's podman and returns the reference to run. */
  private async prepareImage(): Promise<string> {
    const agent = this.agent!;
    const source = imageSourceOf(this.record.config);
    let image: string;
    if (source.kind === 'archive') {
      this.progress(`copying ${path.basename(source.path)} (${(source.size / 1048576).toFixed(1)} MiB) into the VM`);
      const result = await execCollect(agent, { argv: podmanLoadArgv() }, fs.createReadStream(source.path), { timeoutMs: IMAGE_TIMEOUT_MS });
      const loaded = loadedImageFrom(result.stdout.toString() + result.stderr.toString());
      if (result.code !== 0 || !loaded) {
        throw new ShoalError(`loading ${source.format}:${source.path} failed: ${lastLine(result.stderr) || `podman load exited ${result.code}`}`);
      }
      image = loaded;
    } else {
      this.progress(`pulling ${source.reference} in the VM`);
      const result = await execCollect(agent, { argv: podmanPullArgv(source.reference), env: this.network.proxyEnv() }, undefined, { timeoutMs: IMAGE_TIMEOUT_MS });
      if (result.code !== 0) {
        throw new ShoalError(`pulling ${source.reference} failed: ${lastLine(result.stderr) || `podman pull exited ${result.code}`}`);
      }
      image = source.reference;
    }
    this.records.update((r) => { r.loadedImage = image; });
    return image;
  }

  private async mountDirectoryMaps(): Promise<void> {
    const maps = this.record.config.maps ?? [];
    if (maps.length === 0) return;
    this.progress(`mounting ${maps.map((m) => m.host).join(', ')} in the VM`);
    this.directoryMaps = await serveDirectoryMaps(this.agent!, maps);
  }

  private runMainContainer(image: string): Promise<number> {
    const agent = this.agent!;
    const { config } = this.record;
    // The container's env values ride in podman's environment, not its argv (podmanRun).
    const run = podmanRun({
      image,
      command: config.command,
      env: config.env,
      interactive: config.interactive,
      tty: config.tty !== undefined,
      volumes: this.directoryMaps.map((m) => ({ source: m.mountpoint, target: m.map.guest, readOnly: m.map.readOnly })),
      ...(config.container ? { container: config.container } : {}),
    });
    const channel = agent.open({
      kind: 'exec',
      argv: run.argv,
      stdin: config.interactive,
      // podman hands its proxy variables on to the container (--http-proxy, on by default).
      env: { ...this.network.proxyEnv(), ...run.processEnv },
      ...(config.tty ? { tty: this.container.terminalSize ?? config.tty } : {}),
      // Survives a session reset: a clone restored from a snapshot keeps running its container.
      persistent: true,
    });
    this.container.adopt(channel);
    void this.markRunningWhenStarted(channel);
    return this.container.follow(channel, agent);
  }

  /**
   * `podman run` takes a moment to create and start the container; the VM counts as running
   * (and `shoal run -d` returns) only once the container really runs, so an exec right after
   * finds it.
   */
  private async markRunningWhenStarted(main: Channel): Promise<void> {
    const agent = this.agent!;
    const deadline = Date.now() + 120_000;
    while (!main.closed && !this.finished && Date.now() < deadline) {
      const result = await execCollect(agent, { argv: podmanWaitRunningArgv() }).catch(() => undefined);
      if (result?.code === 0) break;
      await sleep(100);
    }
    if (main.closed || this.finished || this.stopRequested) return;
    this.setState('running', (r) => { r.startedAt = new Date().toISOString(); });
    this.attachments.running();
  }

  /**
   * Ends the supervisor: VM off, files cleaned, record final, and only then the result to the
   * watchers, so that when `shoal run` returns the VM is really gone (and with --rm, removed).
   */
  private async finish(state: 'stopped' | 'failed', result: { exitCode?: number; error?: string }): Promise<void> {
    if (this.finished) return;
    this.finished = true;
    await this.powerOff();
    await this.network.close();
    this.setState(state, (r) => {
      r.finishedAt = new Date().toISOString();
      if (result.exitCode !== undefined) r.exitCode = result.exitCode;
      if (result.error !== undefined) r.error = result.error;
    });
    this.server?.close();
    await releaseVmResources(this.record, this.files.dir);
    if (this.record.config.autoRemove) this.store.remove(this.record);
    this.attachments.end(result);
    // Let the final frames reach the CLI before the process goes.
    setTimeout(() => process.exit(0), 200).unref();
  }

  private async powerOff(): Promise<void> {
    const vm = this.vm;
    if (!vm) return;
    // Without a link (lost, or ended for a protocol error) nobody can ask the guest to power
    // off: waiting for it would only delay the end.
    const asked = this.agent !== undefined && !this.agent.destroyed;
    if (asked) await request(this.agent!, { kind: 'poweroff' }, 2000).catch(() => undefined);
    await vm.shutdown(asked ? SHUTDOWN_TIMEOUT_MS : 0);
    this.agent?.destroy();
  }

  // ---- control socket -------------------------------------------------------------------

  private async listen(): Promise<void> {
    this.server = await ControlServer.listen(this.files.controlSocket, {
      attach: (channel, request) => this.attachments.attach(channel, request.stdio),
      exec: (channel, request) => this.onExec(channel, request),
      files: (channel, request) => this.onFiles(channel, request),
      keptList: (channel) => this.relayToAgent(channel, { kind: 'kept-list' }),
      keptAttach: (channel, request) => this.relayToAgent(channel, { kind: 'kept-attach', id: request.id }),
      snapshot: (channel, request) => {
        channel.setDataHandler(() => undefined);
        void this.snapshotter.serve(channel, request.dir);
      },
      stop: (channel, request) => {
        channel.setDataHandler(() => undefined);
        void this.stop(request.timeoutSeconds);
        sendEvent(channel, { type: 'result' });
        channel.close();
      },
    });
  }

  private onExec(channel: Channel, req: ExecControlRequest): void {
    if (!this.agent || this.agent.destroyed || this.record.state !== 'running') {
      refuse(channel, `VM ${this.record.config.name} is not running`);
      return;
    }
    const { argv: command, env, interactive, tty, user, workdir } = req;
    const name = req.container ?? MAIN_CONTAINER;
    const podman = req.vm ? undefined : podmanExec(command, { name, env, interactive, tty: tty !== undefined, ...(user !== undefined ? { user } : {}), ...(workdir !== undefined ? { workdir } : {}) });
    const agentRequest: ExecRequest = { kind: 'exec', argv: podman?.argv ?? command, stdin: interactive };
    if (tty) agentRequest.tty = tty;
    if (req.keep) agentRequest.keep = { tag: req.keep.tag };
    // In the VM: the command's env; through podman: the values of its bare `--env KEY`s.
    if (req.vm) agentRequest.env = env;
    else if (Object.keys(podman!.processEnv).length > 0) agentRequest.env = podman!.processEnv;
    // The agent enters the container directly (crun exec, so signals reach the process itself)
    // when it can, with -u and -w applied as podman applies them; argv is its fallback.
    if (!req.vm) agentRequest.container = { name, argv: command, env, ...(user !== undefined ? { user } : {}), ...(workdir !== undefined ? { workdir } : {}) };
    relayChannels(channel, this.agent.open({ ...agentRequest }));
  }

  /** A request the agent answers itself (its kept processes), relayed as is. */
  private relayToAgent(channel: Channel, agentRequest: KeptListRequest | KeptAttachRequest): void {
    if (!this.agent || this.agent.destroyed || this.record.state !== 'running') {
      refuse(channel, `VM ${this.record.config.name} is not running`);
      return;
    }
    relayChannels(channel, this.agent.open({ ...agentRequest }));
  }

  /** File operations in the container, done by the agent (src/agent/files.ts checks the paths again). */
  private onFiles(channel: Channel, req: FilesControlRequest): void {
    if (!this.agent || this.agent.destroyed || this.record.state !== 'running') {
      channel.send({ type: 'error', code: 'ENOCONTAINER', message: `VM ${this.record.config.name} is not running` });
      channel.close();
      return;
    }
    const agentRequest: FilesRequest = { kind: 'files', op: req.op, path: req.path };
    if (req.to !== undefined) agentRequest.to = req.to;
    if (req.recursive === true) agentRequest.recursive = true;
    relayChannels(channel, this.agent.open({ ...agentRequest }));
  }
}

/** --hostname names the guest too (the container shares the guest's network and so its name). */
function guestHostname(config: VmConfig): string {
  return config.container?.hostname ?? config.name;
}

function lastLine(buffer: Buffer): string {
  const lines = buffer.toString('utf8').trim().split('\n');
  return (lines[lines.length - 1] ?? '').replace(/^Error:\s*/, '');
}
