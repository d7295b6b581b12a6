/**
 * A fake `firecracker` process for driver tests. It serves the API on
 * `--api-sock` (HTTP/1.1 over a Unix socket), validates EVERY request against
 * Firecracker's OpenAPI spec with the same ajv schemas as the contract tests,
 * answers 400 + fault_message for anything the spec (or Firecracker's
 * documented state rules) rejects, and records every exchange as a JSON
 * line in $FAKE_FC_RECORD. After InstanceStart / snapshot load it plays the
 * vsock device (docs/vsock.md) with an echoing "guest agent" on port 1024.
 *
 * This is not Firecracker: it checks shoal's sequencing; the spec remains
 * the judge of each body. What it models of v1.16.1 beyond the spec, from its source:
 *  - logger/metrics files are opened with O_CREAT (vmm/src/utils/mod.rs open_file_nonblock);
 *  - a TAP is opened by name with TUNSETIFF (net/tap.rs Tap::open_named): a missing one is
 *    created when the process may (CAP_NET_ADMIN, here: euid 0), else the request fails;
 *  - snapshot create saves device state first (lib.rs save_state), and with it the vsock
 *    device publishes a TRANSPORT_RESET (vsock/device.rs prepare_save): on the next resume the
 *    guest drops every open connection (the host's end dies on its next write), listeners stay;
 *  - from 1.16.0 to 1.16.x every resume arms the vsock RX gate (kick(): pending_event_ack = true;
 *    commit a34d51c, unreleased after 1.16.1, stops that on a bare resume); only the guest's ack
 *    of a published reset clears it, so after a pause without a snapshot host-to-guest vsock
 *    stalls (CONNECTs unanswered);
 *  - the MAC is device state: saved in the snapshot, restored by the load, never overridden
 *    (network_overrides carries iface_id + host_dev_name only); GET /vm/config shows it;
 *  - the load reopens each drive at its recorded path and each TAP by its (overridden) name:
 *    a missing drive fails the load, and a failed load ends the process;
 *  - in a jail (FAKE_FC_ROOT, set by the fake jailer) every path is resolved inside the root;
 *  - guest memory (test/helpers/fake-guest-memory.ts): zeroed at boot, a private mapping of the
 *    File backend at a load (or, with Uffd, the file FAKE_FC_UFFD_SERVES names, as its page
 *    server would serve it); snapshot create writes it Full (every page) or Diff (the pages dirtied
 *    since the load or the last snapshot with track_dirty_pages; every resident page without),
 *    merged into an existing file of the memory's size, as vm.rs snapshot_memory_to_file does;
 *  - before 1.13.0 (FAKE_FC_VERSION): the load has no track_dirty_pages (unknown field, 400) and a
 *    Diff without dirty tracking is refused (rpc_interface.rs create_snapshot in v1.12.0);
 *  - FAKE_FC_GUEST_INIT=<initramfs /init> + FAKE_FC_GUEST_RUN=<shell words>: after InstanceStart
 *    the guest runs that script's functions and then the words; `poweroff -f` halts the guest (no
 *    ACPI power-off in Firecracker: the process stays), `reboot -f` ends the process (reboot=k).
 *
 * Environment: FAKE_FC_RECORD (jsonl path), FAKE_FC_VERSION (default 1.16.1),
 * FAKE_FC_AGENT_DELAY_MS (guest agent starts listening this long after start),
 * FAKE_FC_IGNORE_CAD=1 (ignore SendCtrlAltDel, to exercise the kill path),
 * FAKE_FC_NO_NET_ADMIN=1 (open TAPs as a process without CAP_NET_ADMIN even as root),
 * FAKE_FC_UFFD_SERVES (the memory file a Uffd load's page server serves),
 * FAKE_FC_AGENT=session (the guest's port 1024 runs the real agent session code instead of an echo;
 * it runs what it is asked ON THE HOST: only for tests that ask for harmless things), or
 * FAKE_FC_AGENT=fake (test/helpers/firecracker-fake-agent.ts: the protocol, with podman simulated).
 *
 * Not Firecracker's API, for tests only (never recorded): `PUT /_fake/guest/write {offset, data}`
 * (data base64) is the running guest writing its memory.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { loadSpecJudge } from './firecracker-spec';
import { HybridVsockPeer, type GuestListener } from './firecracker-vsock-peer';
import { serveSession } from '../../src/agent/session';
import { fakeAgent } from './firecracker-fake-agent';
import { versionAtLeast, parseVersion } from '../../src/vmm/firecracker/requests';
import { FakeGuestMemory } from './fake-guest-memory';

const MiB = 1024 * 1024;
/** MachineConfig's default when no /machine-config was sent (vmm_config/machine_config.rs DEFAULT_MEM_SIZE_MIB). */
const DEFAULT_MEM_SIZE_MIB = 128;

/** The guest agent's session code (src/agent/session.ts) on each accepted connection, as its vsock mode does. */
function sessionAgent(): GuestListener {
  return (s) => {
    s.on('error', () => undefined);
    serveSession(s, () => undefined);
  };
}

export interface Exchange {
  method: string;
  path: string;
  body?: unknown;
  status: number;
  problems: string[];
  responseProblems: string[];
  argv?: string[];
  /** EXEC: the network namespace the process runs in, and the network devices it sees there. */
  netns?: string;
  netDevices?: string[];
}

interface NetDevice { host_dev_name: string; guest_mac?: string }

interface SnapshotState {
  vsock: string | null;
  drives: Record<string, { path_on_host: string; is_read_only: boolean }>;
  net: Record<string, NetDevice>;
  machine: unknown;
}

const PRE_BOOT = [/^\/boot-source$/, /^\/machine-config$/, /^\/drives\//, /^\/network-interfaces\//, /^\/vsock$/, /^\/entropy$/, /^\/mmds\/config$/];

export class FakeFirecracker {
  state: 'Not started' | 'Running' | 'Paused' = 'Not started';
  private configured = false; // anything besides logger/metrics
  private bootSource: { kernel_image_path: string } | null = null;
  private vsockPath: string | null = null;
  private readonly drives: SnapshotState['drives'] = {};
  private readonly net: SnapshotState['net'] = {};
  private machine: unknown = null;
  private peer: HybridVsockPeer | null = null;
  private server: http.Server | null = null;
  private readonly judge = loadSpecJudge();
  /** A snapshot saved device state since the last resume: the vsock published a TRANSPORT_RESET. */
  private resetPublished = false;
  private bootArgs = '';
  private memory: FakeGuestMemory | null = null;

  constructor(
    readonly apiSock: string,
    readonly id: string,
    private readonly opts: {
      record?: string; version?: string; agentDelayMs?: number; ignoreCtrlAltDel?: boolean; onExit?: (code: number) => void;
      root?: string; agent?: 'echo' | 'session' | 'fake'; guestInit?: string; guestRun?: string; console?: (text: string) => void;
      uffdServes?: string;
    } = {},
  ) {}

  /** A path as the process sees it: inside the jail root when jailed. */
  private host(p: string): string {
    return this.opts.root ? path.join(this.opts.root, p) : p;
  }

  /** TUNSETIFF on a name: an existing TAP opens; a missing one is created only with CAP_NET_ADMIN. */
  private openTap(name: string): string | null {
    if (fs.existsSync(`/sys/class/net/${name}`)) return null;
    // CAP_NET_ADMIN: root here, unless FAKE_FC_NO_NET_ADMIN=1 plays an unprivileged (e.g. jailed) process.
    if (process.geteuid?.() === 0 && process.env.FAKE_FC_NO_NET_ADMIN !== '1') return null;
    return `Open tap device failed: Error while creating ifreq structure: Operation not permitted (os error 1). Invalid TUN/TAP Backend provided by ${name}.`;
  }

  private canWrite(p: string): boolean {
    try {
      fs.accessSync(p, fs.constants.W_OK);
      return true;
    } catch {
      return false;
    }
  }

  private record(e: Exchange): void {
    if (this.opts.record) fs.appendFileSync(this.opts.record, JSON.stringify(e) + '\n');
  }

  async start(): Promise<void> {
    if (fs.existsSync(this.apiSock)) throw new Error(`Failed to open the API socket at ${this.apiSock}: address in use`);
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if ((req.url ?? '').startsWith('/_fake/')) {
          const r = this.control(req.method ?? 'GET', req.url ?? '', Buffer.concat(chunks).toString('utf8'));
          res.writeHead(r.status, { 'Content-Type': 'application/json' });
          res.end(JSON.stringify(r.body ?? {}));
          return;
        }
        void this.handle(req.method ?? 'GET', req.url ?? '/', Buffer.concat(chunks).toString('utf8')).then(({ status, body, exchange }) => {
          exchange.responseProblems = this.judge.checkResponse(exchange.method, exchange.path, status, body);
          this.record(exchange);
          const payload = body === undefined ? '' : JSON.stringify(body);
          res.writeHead(status, payload ? { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) } : {});
          res.end(payload);
        });
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(this.apiSock, () => resolve()));
  }

  private fault(status: number, msg: string): { status: number; body: { fault_message: string } } {
    return { status, body: { fault_message: msg } };
  }

  /** The test's hand on the guest (see the header); not part of Firecracker's API. */
  private control(method: string, url: string, raw: string): { status: number; body?: unknown } {
    if (method === 'PUT' && url === '/_fake/guest/write') {
      if (this.state !== 'Running' || !this.memory) return this.fault(400, `the guest is not running (${this.state})`);
      const b = JSON.parse(raw) as { offset: number; data: string };
      try {
        this.memory.write(b.offset, Buffer.from(b.data, 'base64'));
      } catch (e) {
        return this.fault(400, (e as Error).message);
      }
      return { status: 204 };
    }
    return this.fault(404, `no fake control ${method} ${url}`);
  }

  private memSizeBytes(machine: unknown): number {
    return ((machine as { mem_size_mib?: number } | null)?.mem_size_mib ?? DEFAULT_MEM_SIZE_MIB) * MiB;
  }

  private atLeast(version: string): boolean {
    return versionAtLeast(parseVersion(this.opts.version ?? '1.16.1'), version);
  }

  private async handle(method: string, url: string, raw: string): Promise<{ status: number; body?: unknown; exchange: Exchange }> {
    let body: unknown;
    const exchange: Exchange = { method, path: url, status: 0, problems: [], responseProblems: [] };
    if (raw.trim() !== '') {
      try {
        body = JSON.parse(raw);
      } catch {
        exchange.problems.push('body is not JSON');
        exchange.status = 400;
        return { ...this.fault(400, 'invalid JSON'), exchange };
      }
    }
    exchange.body = body;
    exchange.problems = this.judge.checkRequest(method, url, body);
    const r = exchange.problems.length ? this.fault(400, exchange.problems.join('; ')) : await this.apply(method, url, body as Record<string, unknown>);
    exchange.status = r.status;
    return { ...r, exchange };
  }

  private async apply(method: string, url: string, b: Record<string, unknown>): Promise<{ status: number; body?: unknown }> {
    const ok = { status: 204 };
    if (method === 'GET' && url === '/version') return { status: 200, body: { firecracker_version: this.opts.version ?? '1.16.1' } };
    if (method === 'GET' && url === '/') return { status: 200, body: { app_name: 'Firecracker', id: this.id, state: this.state, vmm_version: this.opts.version ?? '1.16.1' } };
    if (method === 'GET' && url === '/vm/config') return { status: 200, body: this.vmConfig() };
    if (method === 'PUT' && (url === '/logger' || url === '/metrics')) {
      // open_file_nonblock: O_CREAT | O_RDWR, so only a missing directory fails.
      const p = this.host(String(b.log_path ?? b.metrics_path));
      try {
        fs.closeSync(fs.openSync(p, 'a'));
      } catch (e) {
        return this.fault(400, `Failed to open target file: ${(e as Error).message}`);
      }
      return ok;
    }
    if (method === 'PUT' && PRE_BOOT.some((re) => re.test(url))) {
      if (this.state !== 'Not started') return this.fault(400, 'The requested operation is not supported after starting the microVM.');
      this.configured = true;
      if (url === '/boot-source') {
        if (!fs.existsSync(this.host(String(b.kernel_image_path)))) return this.fault(400, `The kernel file cannot be opened: ${String(b.kernel_image_path)}`);
        this.bootSource = { kernel_image_path: String(b.kernel_image_path) };
        this.bootArgs = String(b.boot_args ?? '');
      } else if (url === '/machine-config') this.machine = b;
      else if (url.startsWith('/drives/')) {
        if (!fs.existsSync(this.host(String(b.path_on_host)))) return this.fault(400, `Unable to open block device backing file: ${String(b.path_on_host)}`);
        this.drives[String(b.drive_id)] = { path_on_host: String(b.path_on_host), is_read_only: b.is_read_only === true };
      } else if (url.startsWith('/network-interfaces/')) {
        const e = this.openTap(String(b.host_dev_name));
        if (e) return this.fault(400, e);
        this.net[String(b.iface_id)] = { host_dev_name: String(b.host_dev_name), ...(typeof b.guest_mac === 'string' ? { guest_mac: b.guest_mac } : {}) };
      } else if (url === '/vsock') this.vsockPath = String(b.uds_path);
      return ok;
    }
    if (method === 'PUT' && url === '/actions') {
      if (b.action_type === 'InstanceStart') {
        if (this.state !== 'Not started') return this.fault(400, 'The microVM is already running.');
        if (!this.bootSource) return this.fault(400, 'Cannot start microvm without kernel configuration.');
        const e = await this.startGuest();
        if (e) return this.fault(400, e);
        this.memory = FakeGuestMemory.zeroed(this.memSizeBytes(this.machine), (this.machine as { track_dirty_pages?: boolean } | null)?.track_dirty_pages === true);
        this.state = 'Running';
        this.runGuestInit();
        return ok;
      }
      if (b.action_type === 'SendCtrlAltDel') {
        if (this.state === 'Not started') return this.fault(400, 'The requested operation is not supported before starting the microVM.');
        if (!this.opts.ignoreCtrlAltDel) setTimeout(() => this.opts.onExit?.(0), 20);
        return ok;
      }
      return ok;
    }
    if (method === 'PATCH' && url === '/vm') {
      if (this.state === 'Not started') return this.fault(400, 'The requested operation is not supported before starting the microVM.');
      if (b.state === 'Paused') {
        this.state = 'Paused';
        return ok;
      }
      this.state = 'Running';
      this.onResume();
      return ok;
    }
    if (method === 'PATCH' && url.startsWith('/drives/')) {
      if (this.state === 'Not started') return this.fault(400, 'The requested operation is not supported before starting the microVM.');
      const d = this.drives[String(b.drive_id)];
      if (!d) return this.fault(400, `Invalid block device ID: ${String(b.drive_id)}`);
      if (!fs.existsSync(this.host(String(b.path_on_host)))) return this.fault(400, `Unable to open block device backing file: ${String(b.path_on_host)}`);
      d.path_on_host = String(b.path_on_host);
      return ok;
    }
    if (method === 'PUT' && url === '/snapshot/create') {
      if (this.state !== 'Paused') return this.fault(400, 'Operation not allowed: the microVM is not paused.');
      const kind = b.snapshot_type === 'Diff' ? 'Diff' : 'Full';
      // Before 1.13.0 a Diff needed dirty tracking, checked before anything is saved.
      if (kind === 'Diff' && !this.memory!.tracking && !this.atLeast('1.13.0')) {
        return this.fault(400, 'The requested operation is not supported: Diff snapshots are not allowed on uVMs with dirty page tracking disabled.');
      }
      // save_state: device state first (the vsock publishes its TRANSPORT_RESET), then the files.
      this.resetPublished = true;
      const st: SnapshotState = { vsock: this.vsockPath, drives: this.drives, net: this.net, machine: this.machine };
      try {
        fs.writeFileSync(this.host(String(b.snapshot_path)), JSON.stringify(st));
      } catch (e) {
        return this.fault(400, `Create snapshot error: Cannot perform open on the snapshot backing file: ${(e as Error).message}`);
      }
      const failed = this.memory!.snapshot(this.host(String(b.mem_file_path)), kind);
      return failed ? this.fault(400, failed) : ok;
    }
    if (method === 'PUT' && url === '/snapshot/load') {
      if (this.state !== 'Not started' || this.configured) return this.fault(400, 'Loading a microVM snapshot not allowed after configuring boot-specific resources.');
      // LoadSnapshotConfig is deny_unknown_fields; before 1.13.0 the field was enable_diff_snapshots.
      // A body that does not parse is refused by the API server: the process lives on.
      if ('track_dirty_pages' in b && !this.atLeast('1.13.0')) {
        return this.fault(400, 'An error occurred when deserializing the json body of a request: unknown field `track_dirty_pages`, expected one of `snapshot_path`, `mem_file_path`, `mem_backend`, `enable_diff_snapshots`, `resume_vm`, `network_overrides`.');
      }
      let st: SnapshotState;
      try {
        st = JSON.parse(fs.readFileSync(this.host(String(b.snapshot_path)), 'utf8')) as SnapshotState;
      } catch (e) {
        setTimeout(() => this.opts.onExit?.(1), 10); // Firecracker ends the process on a failed load
        return this.fault(400, `Load snapshot error: ${(e as Error).message}`);
      }
      const mem = b.mem_backend as { backend_type: string; backend_path: string };
      const failLoad = (msg: string): { status: number; body: { fault_message: string } } => {
        setTimeout(() => this.opts.onExit?.(1), 10); // Firecracker ends the process on a failed load
        return this.fault(400, `Load snapshot error: ${msg}`);
      };
      if (!fs.existsSync(this.host(mem.backend_path))) return failLoad(`cannot open ${mem.backend_type} backend ${mem.backend_path}`);
      // vm_info.mem_size_mib comes from the state; track_dirty_pages from the load only
      // (persist.rs restore_from_snapshot, update_machine_config).
      const tracking = b.track_dirty_pages === true || b.enable_diff_snapshots === true;
      const bytes = this.memSizeBytes(st.machine);
      const memory = mem.backend_type === 'File'
        ? FakeGuestMemory.fromFile(this.host(mem.backend_path), bytes, tracking)
        : this.opts.uffdServes
          ? FakeGuestMemory.fromFile(this.opts.uffdServes, bytes, tracking)
          : FakeGuestMemory.unknownSource(bytes, tracking, 'fake firecracker: the Uffd page server\'s file is unknown (set FAKE_FC_UFFD_SERVES)');
      if (typeof memory === 'string') return failLoad(memory);
      // Block persist: each drive reopened at its RECORDED path (state.disk_path), read-write unless read-only.
      for (const [id, d] of Object.entries(st.drives)) {
        const p = this.host(d.path_on_host);
        if (!fs.existsSync(p)) return failLoad(`Failed to restore block device ${id}: Unable to open block device backing file ${d.path_on_host}: No such file or directory (os error 2)`);
        if (!d.is_read_only && !this.canWrite(p)) return failLoad(`Failed to restore block device ${id}: ${d.path_on_host} is not writable`);
      }
      const net: Record<string, NetDevice> = JSON.parse(JSON.stringify(st.net)) as Record<string, NetDevice>;
      for (const o of (b.network_overrides as Array<{ iface_id: string; host_dev_name: string }> | undefined) ?? []) {
        const dev = net[o.iface_id];
        if (!dev) return failLoad('Unknown network device');
        dev.host_dev_name = o.host_dev_name; // only the TAP name: the MAC stays the device's
      }
      for (const dev of Object.values(net)) {
        const e = this.openTap(dev.host_dev_name);
        if (e) return failLoad(e);
      }
      Object.assign(this.drives, st.drives);
      Object.assign(this.net, net);
      this.memory = memory;
      this.machine = st.machine === null ? null : { ...(st.machine as object), track_dirty_pages: tracking };
      this.vsockPath = (b.vsock_override as { uds_path: string } | undefined)?.uds_path ?? st.vsock;
      const e = await this.startGuest();
      if (e) return this.fault(400, e);
      // The snapshot carries the published reset: the guest acks it on its first resume.
      this.resetPublished = true;
      if (b.resume_vm === true) {
        this.state = 'Running';
        this.onResume();
      } else this.state = 'Paused';
      return ok;
    }
    return this.fault(400, `fake firecracker does not implement ${method} ${url}`);
  }

  /** What a resume does to the vsock device (v1.16.1 kick(), see the header). */
  private onResume(): void {
    // v1.16.0 brought the gate; the fix (commit a34d51c) is in no release up to 1.16.1.
    const gateOnEveryResume = this.atLeast('1.16.0') && !this.atLeast('1.17.0');
    if (this.resetPublished) {
      // The guest processes the TRANSPORT_RESET: connections dropped, then it acks (gate cleared).
      this.peer?.resetConnections();
      this.peer?.setRxGate(false);
      this.resetPublished = false;
    } else if (gateOnEveryResume) {
      this.peer?.setRxGate(true);
    }
  }

  private vmConfig(): Record<string, unknown> {
    const config: Record<string, unknown> = {
      drives: Object.entries(this.drives).map(([drive_id, d]) => ({ drive_id, path_on_host: d.path_on_host, is_read_only: d.is_read_only, is_root_device: false })),
      'network-interfaces': Object.entries(this.net).map(([iface_id, n]) => ({ iface_id, host_dev_name: n.host_dev_name, ...(n.guest_mac ? { guest_mac: n.guest_mac } : {}) })),
    };
    if (this.machine) config['machine-config'] = this.machine;
    if (this.vsockPath) config.vsock = { guest_cid: 3, uds_path: this.vsockPath };
    return config;
  }

  /**
   * The guest's early userspace: the initramfs /init's functions, then FAKE_FC_GUEST_RUN, with
   * /proc/cmdline as the boot args. `poweroff -f` and `reboot -f` do what a Firecracker guest's
   * would: a halt (no ACPI power-off: the VM stays, vCPUs halted) or the process's exit (reboot=k).
   */
  private runGuestInit(): void {
    if (!this.opts.guestInit || !this.opts.guestRun) return;
    const script = fs.readFileSync(this.opts.guestInit, 'utf8');
    // Only the function definitions (no mounts, no insmod): everything up to the first mount.
    const functions = script.slice(0, script.indexOf('\nmount '));
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-guest-'));
    for (const cmd of ['poweroff', 'reboot']) fs.writeFileSync(path.join(bin, cmd), `#!/bin/sh\necho "FAKE-GUEST-${cmd}"\nsleep 60\n`, { mode: 0o755 });
    const cmdline = path.join(bin, 'cmdline');
    fs.writeFileSync(cmdline, `${this.bootArgs}\n`);
    const body = functions.replace('/bin/busybox --install -s /bin', ':').replace('export PATH=/bin', `export PATH=${bin}:/usr/bin:/bin`).replace(/\/proc\/cmdline/g, cmdline);
    // Its own process group: the whole "guest" (the stub poweroff/reboot included) stops at once.
    const child = spawn('/bin/sh', ['-c', `${body}\n${this.opts.guestRun}`], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const stopGuest = (): void => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* already gone */
      }
    };
    process.once('exit', stopGuest);
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      this.opts.console?.(c.toString().replace(/FAKE-GUEST-\w+\n/g, ''));
      if (out.includes('FAKE-GUEST-')) fs.rmSync(bin, { recursive: true, force: true });
      if (out.includes('FAKE-GUEST-reboot')) {
        stopGuest();
        this.opts.console?.('reboot: Restarting system\n');
        this.opts.onExit?.(0);
      } else if (out.includes('FAKE-GUEST-poweroff')) {
        stopGuest();
        this.opts.console?.('reboot: System halted\n');
      }
    });
    child.on('close', () => fs.rmSync(bin, { recursive: true, force: true }));
  }

  private agentListener: GuestListener | undefined;

  /** One guest agent per VM (it outlives connections, as the real one does). */
  private guestAgent(): GuestListener {
    this.agentListener ??= this.opts.agent === 'session' ? sessionAgent() : this.opts.agent === 'fake' ? fakeAgent(() => this.opts.onExit?.(0)) : (s) => s.pipe(s);
    return this.agentListener;
  }

  /** Brings up the vsock device's UDS with a guest agent on port 1024 (an echo, the real session code, or a fake agent). */
  private async startGuest(): Promise<string | null> {
    if (!this.vsockPath) return null;
    const uds = this.host(this.vsockPath);
    if (fs.existsSync(uds)) return `Cannot create vsock backend: address in use: ${this.vsockPath}`;
    this.peer = new HybridVsockPeer(uds);
    await this.peer.start();
    const listen = (): void => {
      this.peer?.listen(1024, this.guestAgent());
    };
    const delay = this.opts.agentDelayMs ?? 0;
    if (delay > 0) setTimeout(listen, delay);
    else listen();
    return null;
  }

  async stop(): Promise<void> {
    await this.peer?.stop();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    fs.rmSync(this.apiSock, { force: true });
  }
}

/** Writes an executable `firecracker` in dir that runs this fake (needs the compiled dist). */
export function writeFakeBinary(dir: string): string {
  const bin = path.join(dir, 'firecracker');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(bin, `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(__filename)} "$@"\n`, { mode: 0o755 });
  return bin;
}

function argValue(argv: string[], name: string): string | undefined {
  const i = argv.indexOf(name);
  if (i >= 0) return argv[i + 1];
  const eq = argv.find((a) => a.startsWith(`${name}=`));
  return eq?.slice(name.length + 1);
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const root = process.env.FAKE_FC_ROOT;
  const apiSockArg = argValue(argv, '--api-sock') ?? '/run/firecracker.socket';
  const apiSock = root ? path.join(root, apiSockArg) : apiSockArg;
  const id = argValue(argv, '--id') ?? 'anonymous-instance';
  const record = process.env.FAKE_FC_RECORD;
  // As Firecracker opens its TAP by name in the network namespace it runs in, say which one that is.
  const netns = fs.readlinkSync('/proc/self/ns/net');
  const netDevices = fs.readFileSync('/proc/self/net/dev', 'utf8').split('\n').slice(2).map((l) => l.split(':')[0]!.trim()).filter(Boolean);
  if (record) fs.appendFileSync(record, JSON.stringify({ method: 'EXEC', path: '', status: 0, problems: [], responseProblems: [], argv, netns, netDevices }) + '\n');
  let fake: FakeFirecracker;
  const exit = (code: number): void => {
    void fake.stop().finally(() => process.exit(code));
  };
  fake = new FakeFirecracker(apiSock, id, {
    record,
    version: process.env.FAKE_FC_VERSION,
    agentDelayMs: Number(process.env.FAKE_FC_AGENT_DELAY_MS ?? 0),
    ignoreCtrlAltDel: process.env.FAKE_FC_IGNORE_CAD === '1',
    onExit: exit,
    ...(root ? { root } : {}),
    agent: process.env.FAKE_FC_AGENT === 'session' ? 'session' : process.env.FAKE_FC_AGENT === 'fake' ? 'fake' : 'echo',
    ...(process.env.FAKE_FC_GUEST_INIT ? { guestInit: process.env.FAKE_FC_GUEST_INIT } : {}),
    ...(process.env.FAKE_FC_GUEST_RUN ? { guestRun: process.env.FAKE_FC_GUEST_RUN } : {}),
    ...(process.env.FAKE_FC_UFFD_SERVES ? { uffdServes: process.env.FAKE_FC_UFFD_SERVES } : {}),
    console: (text) => process.stdout.write(text),
  });
  process.on('SIGTERM', () => exit(143));
  try {
    await fake.start();
  } catch (e) {
    process.stderr.write(`${(e as Error).message}${os.EOL}`);
    process.exit(1);
  }
  process.stdout.write('fake firecracker: serial console output\n');
}

if (require.main === module) void main();
