/**
 * FirecrackerBackend driving a fake `firecracker` process: a Unix-socket
 * HTTP server that validates EVERY request against firecracker.yaml (same
 * ajv schemas as the contract tests) and records it. Asserts the call
 * sequences for boot, agent connect, pause, snapshot, restore, shutdown.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import type { Duplex } from 'node:stream';
import type { RestoreSpec, VmSpec } from '../../src/vmm/backend';
import { FirecrackerBackend, findFirecrackerBinary } from '../../src/vmm/firecracker/backend';
import { plainLaunch } from '../../src/vmm/firecracker/launch';
import { writeFakeBinary, type Exchange } from '../helpers/firecracker-fake';

let dir: string;
let bin: string;
let record: string;
let n = 0;

before(() => {
  dir = fs.mkdtempSync(path.join('/tmp', 'fcb-')); // short: socket paths are limited to 107 bytes
  bin = writeFakeBinary(path.join(dir, 'bin'));
  for (const f of ['vmlinux', 'initrd.img', 'rootfs.ext4', 'scratch-a.img', 'scratch-b.img']) fs.writeFileSync(path.join(dir, f), 'x');
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));
beforeEach(() => {
  record = path.join(dir, `rec-${++n}.jsonl`);
  process.env.FAKE_FC_RECORD = record;
  delete process.env.FAKE_FC_VERSION;
  delete process.env.FAKE_FC_AGENT_DELAY_MS;
  delete process.env.FAKE_FC_IGNORE_CAD;
});

function exchanges(): Exchange[] {
  if (!fs.existsSync(record)) return [];
  return fs.readFileSync(record, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Exchange);
}

function calls(): string[] {
  return exchanges().filter((e) => e.method !== 'EXEC').map((e) => `${e.method} ${e.path} ${e.status}`);
}

function assertAllOnSpec(): void {
  for (const e of exchanges()) {
    assert.deepEqual(e.problems, [], `request off-spec: ${e.method} ${e.path} ${JSON.stringify(e.body)}`);
    assert.deepEqual(e.responseProblems, [], `response off-spec: ${e.method} ${e.path}`);
  }
}

function body(method: string, p: string): Record<string, unknown> {
  const e = exchanges().find((x) => x.method === method && x.path === p);
  assert.ok(e, `${method} ${p} was not sent`);
  return e.body as Record<string, unknown>;
}

function vmSpec(id: string, over: Partial<VmSpec> = {}): VmSpec {
  return {
    id,
    runDir: path.join(dir, id),
    kernel: path.join(dir, 'vmlinux'),
    initrd: path.join(dir, 'initrd.img'),
    cmdline: 'console=ttyS0 reboot=k panic=1 shoal.transport=vsock',
    cpus: 2,
    memoryMiB: 256,
    drives: [
      { id: 'vda', path: path.join(dir, 'rootfs.ext4'), readOnly: true },
      { id: 'vdb', path: path.join(dir, 'scratch-a.img'), readOnly: false },
    ],
    net: { tap: 'shoaltap0', mac: '02:fc:00:00:00:01' },
    accel: 'kvm',
    consoleLog: path.join(dir, id, 'console.log'),
    ...over,
  };
}

function roundTrip(s: Duplex, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let got = '';
    s.on('data', (c: Buffer) => {
      got += c.toString();
      if (got.length >= text.length) resolve(got);
    });
    s.once('error', reject);
    s.write(text);
  });
}

const backend = (over: ConstructorParameters<typeof FirecrackerBackend>[0] = {}): FirecrackerBackend =>
  new FirecrackerBackend({ binary: bin, startTimeoutMs: 5000, ...over });

describe('FirecrackerBackend against a spec-validating fake firecracker', () => {
  it('boot: spawns with --api-sock/--id, configures in order, starts; agent via vsock; pause, snapshot, resume; shutdown', async () => {
    process.env.FAKE_FC_AGENT_DELAY_MS = '300'; // the agent listens a bit after InstanceStart: connectAgent must retry
    const spec = vmSpec('aaaaaaaaaaaa');
    const vm = await backend().boot(spec);
    try {
      assert.equal(vm.kind, 'firecracker');
      assert.ok(vm.pid > 0);
      const exec = exchanges().find((e) => e.method === 'EXEC')!;
      assert.deepEqual(exec.argv, ['--api-sock', path.join(spec.runDir, 'fc.sock'), '--id', spec.id]);
      assert.deepEqual(calls(), [
        'GET /version 200',
        'PUT /logger 204',
        'PUT /metrics 204',
        'PUT /machine-config 204',
        'PUT /boot-source 204',
        'PUT /drives/vda 204',
        'PUT /drives/vdb 204',
        'PUT /network-interfaces/eth0 204',
        'PUT /vsock 204',
        'PUT /entropy 204',
        'PUT /actions 204',
      ]);
      assert.deepEqual(body('PUT', '/machine-config'), { vcpu_count: 2, mem_size_mib: 256, smt: false });
      assert.deepEqual(body('PUT', '/boot-source'), { kernel_image_path: spec.kernel, initrd_path: spec.initrd, boot_args: spec.cmdline });
      assert.deepEqual(body('PUT', '/vsock'), { guest_cid: 3, uds_path: path.join(spec.runDir, 'vsock.sock') });
      assert.equal(body('PUT', '/drives/vda').is_read_only, true);
      assert.equal(body('PUT', '/drives/vdb').is_read_only, false);

      const agent = await vm.connectAgent(3000);
      assert.equal(await roundTrip(agent, 'hello agent'), 'hello agent');
      agent.destroy();

      await vm.pause();
      await vm.snapshot({ stateFile: path.join(dir, 'snap.state'), memoryFile: path.join(dir, 'snap.mem') }, 'full');
      await vm.snapshot({ stateFile: path.join(dir, 'snap2.state'), memoryFile: path.join(dir, 'snap2.mem') }, 'diff');
      await vm.resume();
      assert.deepEqual(calls().slice(11), ['PATCH /vm 204', 'PUT /snapshot/create 204', 'PUT /snapshot/create 204', 'PATCH /vm 204']);
      assert.deepEqual(body('PUT', '/snapshot/create'), { snapshot_path: path.join(dir, 'snap.state'), mem_file_path: path.join(dir, 'snap.mem'), snapshot_type: 'Full' });

      const exit = await vm.shutdown(3000);
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.equal(calls().at(-1), 'PUT /actions 204');
      assert.deepEqual(exchanges().at(-1)!.body, { action_type: 'SendCtrlAltDel' });
      assert.match(fs.readFileSync(spec.consoleLog, 'utf8'), /serial console output/);
      assertAllOnSpec();
    } finally {
      vm.kill();
      await vm.exited;
    }
  });

  it('restore: load (paused) with overrides for a new vsock/TAP, swap the clone disk, resume; agent reachable', async () => {
    const source = vmSpec('bbbbbbbbbbbb');
    const a = await backend().boot(source);
    await a.pause();
    const files = { stateFile: path.join(dir, 'b.state'), memoryFile: path.join(dir, 'b.mem') };
    await a.snapshot(files, 'full');
    a.kill();
    await a.exited;

    record = path.join(dir, `rec-${++n}.jsonl`);
    process.env.FAKE_FC_RECORD = record;
    const clone: RestoreSpec = {
      id: 'cccccccccccc',
      runDir: path.join(dir, 'cccccccccccc'),
      snapshot: files,
      memory: { kind: 'file', path: files.memoryFile },
      source,
      drives: [source.drives[0]!, { id: 'vdb', path: path.join(dir, 'scratch-b.img'), readOnly: false }],
      net: { tap: 'shoaltap1', mac: '02:fc:00:00:00:01' },
      consoleLog: path.join(dir, 'cccccccccccc', 'console.log'),
    };
    const vm = await backend().restore(clone);
    try {
      assert.deepEqual(calls(), [
        'GET /version 200',
        'PUT /logger 204',
        'PUT /metrics 204',
        'PUT /snapshot/load 204',
        'PATCH /drives/vdb 204',
        'PATCH /vm 204',
      ]);
      assert.deepEqual(body('PUT', '/snapshot/load'), {
        snapshot_path: files.stateFile,
        mem_backend: { backend_type: 'File', backend_path: files.memoryFile },
        resume_vm: false,
        network_overrides: [{ iface_id: 'eth0', host_dev_name: 'shoaltap1' }],
        vsock_override: { uds_path: path.join(clone.runDir, 'vsock.sock') },
      });
      assert.deepEqual(body('PATCH', '/drives/vdb'), { drive_id: 'vdb', path_on_host: path.join(dir, 'scratch-b.img') });
      assert.deepEqual(body('PATCH', '/vm'), { state: 'Resumed' });
      const agent = await vm.connectAgent(3000);
      assert.equal(await roundTrip(agent, 'clone says hi'), 'clone says hi');
      agent.destroy();
      assertAllOnSpec();
    } finally {
      vm.kill();
      const exit = await vm.exited;
      assert.equal(exit.signal, 'SIGKILL');
    }
  });

  it('restore onto a binary without vsock_override fails with the version it needs, and leaves no process behind', async () => {
    process.env.FAKE_FC_VERSION = '1.15.1';
    const source = vmSpec('dddddddddddd');
    const clone: RestoreSpec = {
      id: 'eeeeeeeeeeee', runDir: path.join(dir, 'eeeeeeeeeeee'), snapshot: { stateFile: path.join(dir, 'b.state'), memoryFile: path.join(dir, 'b.mem') },
      memory: { kind: 'file', path: path.join(dir, 'b.mem') }, source, drives: source.drives, net: source.net, consoleLog: path.join(dir, 'e.log'),
    };
    await assert.rejects(backend().restore(clone), /needs Firecracker >= 1\.16\.0 \(vsock_override\); this one is 1\.15\.1/);
    assert.ok(!calls().some((c) => c.startsWith('PUT /snapshot/load')), 'the load was never sent');
  });

  it('a configuration Firecracker rejects surfaces its fault_message and kills the VMM', async () => {
    const spec = vmSpec('ffffffffffff', { kernel: path.join(dir, 'no-such-vmlinux') });
    await assert.rejects(backend().boot(spec), /booting ffffffffffff with Firecracker failed: .*kernel file cannot be opened/);
    assert.equal(calls().at(-1), 'PUT /boot-source 400');
    assertAllOnSpec();
  });

  it('an early exit is reported with Firecracker stderr', async () => {
    const failing = path.join(dir, 'bin2', 'firecracker');
    fs.mkdirSync(path.dirname(failing), { recursive: true });
    fs.writeFileSync(failing, '#!/bin/sh\necho "Error: Failed to open the API socket: Address in use" >&2\nexit 1\n', { mode: 0o755 });
    await assert.rejects(backend({ binary: failing }).boot(vmSpec('a1a1a1a1a1a1')), /exited \(code 1\) before opening its API socket: Error: Failed to open the API socket: Address in use/);
  });

  it('shutdown kills the VMM when the guest ignores Ctrl+Alt+Del', async () => {
    process.env.FAKE_FC_IGNORE_CAD = '1';
    const vm = await backend().boot(vmSpec('b2b2b2b2b2b2', { net: undefined }));
    const t0 = Date.now();
    const exit = await vm.shutdown(200);
    assert.equal(exit.signal, 'SIGKILL');
    assert.ok(Date.now() - t0 >= 190);
  });

  it('shutdown on aarch64 kills without sending SendCtrlAltDel (x86_64 only)', async () => {
    const vm = await backend({ arch: 'arm64' }).boot(vmSpec('c3c3c3c3c3c3', { net: undefined }));
    const exit = await vm.shutdown(2000);
    assert.equal(exit.signal, 'SIGKILL');
    assert.ok(!exchanges().some((e) => (e.body as { action_type?: string } | undefined)?.action_type === 'SendCtrlAltDel'));
  });

  it('connectAgent gives up after its timeout when no agent listens', async () => {
    process.env.FAKE_FC_AGENT_DELAY_MS = '60000';
    const vm = await backend().boot(vmSpec('d4d4d4d4d4d4', { net: undefined }));
    try {
      await assert.rejects(vm.connectAgent(300), /did not answer on vsock port 1024 within 300 ms/);
    } finally {
      vm.kill();
      await vm.exited;
    }
  });
});

describe('FirecrackerBackend.unavailableReason and binary discovery', () => {
  const env = { PATH: '' };
  it('says when no binary can be found', async () => {
    const b = new FirecrackerBackend({ env, cacheDir: path.join(dir, 'empty-cache') });
    assert.match((await b.unavailableReason())!, /^Firecracker is not installed: .*shoal setup --vmm firecracker.*--firecracker PATH\.$/);
  });

  it('finds the binary via SHOAL_FIRECRACKER, then PATH', () => {
    assert.equal(findFirecrackerBinary({ env: { SHOAL_FIRECRACKER: bin, PATH: '' }, cacheDir: path.join(dir, 'c') }).path, bin);
    assert.equal(findFirecrackerBinary({ env: { PATH: `/nonexistent:${path.dirname(bin)}` }, cacheDir: path.join(dir, 'c') }).path, bin);
  });

  it('says when /dev/kvm is missing or the KVM probe failed, and null when all is well', async () => {
    const kvm = path.join(dir, 'kvm');
    fs.writeFileSync(kvm, '');
    assert.match((await new FirecrackerBackend({ binary: bin, env, kvmDevice: path.join(dir, 'nokvm') }).unavailableReason())!, /nokvm is missing: Firecracker needs KVM/);
    assert.match((await new FirecrackerBackend({ binary: bin, env, kvmDevice: kvm, kvmUsable: async () => false }).unavailableReason())!, /KVM boot probe failed/);
    assert.equal(await new FirecrackerBackend({ binary: bin, env, kvmDevice: kvm, kvmUsable: async () => true }).unavailableReason(), null);
    assert.match((await new FirecrackerBackend({ binary: bin, env, arch: 'ia32' }).unavailableReason())!, /x86_64 and aarch64 hosts only/);
  });

  it('runs the VMM under setpriv --pdeathsig KILL when available', () => {
    const l = plainLaunch({ binary: '/usr/bin/firecracker', id: 'abc', runDir: '/run/x', setpriv: '/usr/bin/setpriv' });
    assert.deepEqual(l.argv, ['/usr/bin/setpriv', '--pdeathsig', 'KILL', '--', '/usr/bin/firecracker', '--api-sock', '/run/x/fc.sock', '--id', 'abc']);
    assert.deepEqual(plainLaunch({ binary: 'fc', id: 'abc', runDir: '/r', setpriv: false }).argv.slice(0, 2), ['fc', '--api-sock']);
  });
});

// Keep os imported for platform notes in failures.
void os;
