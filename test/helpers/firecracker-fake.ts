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
 * the judge of each body.
 *
 * Environment: FAKE_FC_RECORD (jsonl path), FAKE_FC_VERSION (default 1.16.1),
 * FAKE_FC_AGENT_DELAY_MS (guest agent starts listening this long after start),
 * FAKE_FC_IGNORE_CAD=1 (ignore SendCtrlAltDel, to exercise the kill path).
 */
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { loadSpecJudge } from './firecracker-spec';
import { HybridVsockPeer } from './firecracker-vsock-peer';

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

interface SnapshotState {
  vsock: string | null;
  drives: Record<string, { path_on_host: string; is_read_only: boolean }>;
  net: Record<string, string>;
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

  constructor(
    readonly apiSock: string,
    readonly id: string,
    private readonly opts: { record?: string; version?: string; agentDelayMs?: number; ignoreCtrlAltDel?: boolean; onExit?: (code: number) => void } = {},
  ) {}

  private record(e: Exchange): void {
    if (this.opts.record) fs.appendFileSync(this.opts.record, JSON.stringify(e) + '\n');
  }

  async start(): Promise<void> {
    if (fs.existsSync(this.apiSock)) throw new Error(`Failed to open the API socket at ${this.apiSock}: address in use`);
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
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
    if (method === 'PUT' && (url === '/logger' || url === '/metrics')) {
      const p = String(b.log_path ?? b.metrics_path);
      if (!fs.existsSync(p)) return this.fault(400, `Failed to open target file: No such file or directory (os error 2): ${p}`);
      return ok;
    }
    if (method === 'PUT' && PRE_BOOT.some((re) => re.test(url))) {
      if (this.state !== 'Not started') return this.fault(400, 'The requested operation is not supported after starting the microVM.');
      this.configured = true;
      if (url === '/boot-source') {
        if (!fs.existsSync(String(b.kernel_image_path))) return this.fault(400, `The kernel file cannot be opened: ${String(b.kernel_image_path)}`);
        this.bootSource = { kernel_image_path: String(b.kernel_image_path) };
      } else if (url === '/machine-config') this.machine = b;
      else if (url.startsWith('/drives/')) {
        if (!fs.existsSync(String(b.path_on_host))) return this.fault(400, `Unable to open block device backing file: ${String(b.path_on_host)}`);
        this.drives[String(b.drive_id)] = { path_on_host: String(b.path_on_host), is_read_only: b.is_read_only === true };
      } else if (url.startsWith('/network-interfaces/')) this.net[String(b.iface_id)] = String(b.host_dev_name);
      else if (url === '/vsock') this.vsockPath = String(b.uds_path);
      return ok;
    }
    if (method === 'PUT' && url === '/actions') {
      if (b.action_type === 'InstanceStart') {
        if (this.state !== 'Not started') return this.fault(400, 'The microVM is already running.');
        if (!this.bootSource) return this.fault(400, 'Cannot start microvm without kernel configuration.');
        const e = await this.startGuest();
        if (e) return this.fault(400, e);
        this.state = 'Running';
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
      this.state = b.state === 'Paused' ? 'Paused' : 'Running';
      return ok;
    }
    if (method === 'PATCH' && url.startsWith('/drives/')) {
      if (this.state === 'Not started') return this.fault(400, 'The requested operation is not supported before starting the microVM.');
      const d = this.drives[String(b.drive_id)];
      if (!d) return this.fault(400, `Invalid block device ID: ${String(b.drive_id)}`);
      if (!fs.existsSync(String(b.path_on_host))) return this.fault(400, `Unable to open block device backing file: ${String(b.path_on_host)}`);
      d.path_on_host = String(b.path_on_host);
      return ok;
    }
    if (method === 'PUT' && url === '/snapshot/create') {
      if (this.state !== 'Paused') return this.fault(400, 'Operation not allowed: the microVM is not paused.');
      const st: SnapshotState = { vsock: this.vsockPath, drives: this.drives, net: this.net, machine: this.machine };
      fs.writeFileSync(String(b.snapshot_path), JSON.stringify(st));
      fs.writeFileSync(String(b.mem_file_path), Buffer.alloc(4096, b.snapshot_type === 'Diff' ? 1 : 2));
      return ok;
    }
    if (method === 'PUT' && url === '/snapshot/load') {
      if (this.state !== 'Not started' || this.configured) return this.fault(400, 'Loading a microVM snapshot not allowed after configuring boot-specific resources.');
      let st: SnapshotState;
      try {
        st = JSON.parse(fs.readFileSync(String(b.snapshot_path), 'utf8')) as SnapshotState;
      } catch (e) {
        setTimeout(() => this.opts.onExit?.(1), 10); // Firecracker ends the process on a failed load
        return this.fault(400, `Load snapshot error: ${(e as Error).message}`);
      }
      const mem = b.mem_backend as { backend_type: string; backend_path: string };
      if (!fs.existsSync(mem.backend_path)) {
        setTimeout(() => this.opts.onExit?.(1), 10);
        return this.fault(400, `Load snapshot error: cannot open ${mem.backend_type} backend ${mem.backend_path}`);
      }
      Object.assign(this.drives, st.drives);
      Object.assign(this.net, st.net);
      for (const o of (b.network_overrides as Array<{ iface_id: string; host_dev_name: string }> | undefined) ?? []) this.net[o.iface_id] = o.host_dev_name;
      this.vsockPath = (b.vsock_override as { uds_path: string } | undefined)?.uds_path ?? st.vsock;
      const e = await this.startGuest();
      if (e) return this.fault(400, e);
      this.state = b.resume_vm === true ? 'Running' : 'Paused';
      return ok;
    }
    return this.fault(400, `fake firecracker does not implement ${method} ${url}`);
  }

  /** Brings up the vsock device's UDS with an echoing guest agent on port 1024. */
  private async startGuest(): Promise<string | null> {
    if (!this.vsockPath) return null;
    if (fs.existsSync(this.vsockPath)) return `Cannot create vsock backend: address in use: ${this.vsockPath}`;
    this.peer = new HybridVsockPeer(this.vsockPath);
    await this.peer.start();
    const listen = (): void => {
      this.peer?.listen(1024, (s) => s.pipe(s));
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
  const apiSock = argValue(argv, '--api-sock') ?? '/run/firecracker.socket';
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
