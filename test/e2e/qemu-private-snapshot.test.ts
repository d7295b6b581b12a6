/**
 * The QEMU layer's snapshot of a VM whose RAM is a private mapping (src/vmm/qemu/private-snapshot.ts),
 * below the supervisor: a VM booted with shared RAM is snapshotted the first-generation way, a
 * clone is restored from that, the clone is snapshotted (its parent's memory plus the pages it
 * changed, device state from a filtered migration stream), and a grandchild restored from the result sees the clone's memory and disk as they were, while the
 * clone keeps running with its own state. Real QEMU (TCG here), real guest agent.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { loadAssets } from '../../src/assets/setup';
import { execCollect } from '../../src/host/exec-client';
import { openAgentSession } from '../../src/host/agent-session';
import type { Mux } from '../../src/protocol/mux';
import { vmKernelCmdline } from '../../src/supervisor/guest-cmdline';
import { vmmTraits } from '../../src/vmm/traits';
import { createScratchDisk } from '../../src/supervisor/scratch-disk';
import type { VmHandle, VmSpec } from '../../src/vmm/backend';
import { QemuBackend, type QemuVmHandle } from '../../src/vmm/qemu/backend';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'sh-qps-'));
const vms: VmHandle[] = [];
const sessions: Mux[] = [];
const shmFiles: string[] = [];

after(async () => {
  for (const session of sessions) session.destroy();
  for (const vm of vms) vm.kill();
  await Promise.all(vms.map((vm) => vm.exited));
  for (const file of shmFiles) fs.rmSync(file, { force: true });
  fs.rmSync(root, { recursive: true, force: true });
});

async function sh(agent: Mux, script: string): Promise<string> {
  const result = await execCollect(agent, { argv: ['sh', '-c', script] });
  assert.equal(result.code, 0, `${script}: ${result.stderr.toString()}`);
  return result.stdout.toString();
}

async function connect(vm: VmHandle): Promise<Mux> {
  const agent = await openAgentSession(vm, 180_000);
  sessions.push(agent);
  return agent;
}

/** A snapshot directory's files, as shoal lays them out. */
function snapshotDir(name: string): { dir: string; state: string; memory: string; scratch: string } {
  const dir = path.join(root, name);
  fs.mkdirSync(dir);
  return { dir, state: path.join(dir, 'state.bin'), memory: path.join(dir, 'memory.raw'), scratch: path.join(dir, 'scratch.img') };
}

function copySparse(from: string, to: string): void {
  execFileSync('cp', ['--reflink=auto', '--sparse=always', from, to]);
}

async function restore(backend: QemuBackend, source: VmSpec, snap: ReturnType<typeof snapshotDir>, id: string): Promise<QemuVmHandle> {
  const runDir = path.join(root, id);
  fs.mkdirSync(runDir);
  const scratch = path.join(runDir, 'scratch.img');
  copySparse(snap.scratch, scratch);
  const drives = source.drives.map((d) => (d.id === 'scratch' ? { ...d, path: scratch } : d));
  const vm = (await backend.restore({
    id,
    runDir,
    snapshot: { stateFile: snap.state, memoryFile: snap.memory },
    memory: { kind: 'file', path: snap.memory },
    source,
    drives,
    net: { mac: source.net!.mac, userMode: { forwards: [] } },
    consoleLog: path.join(runDir, 'console.log'),
  })) as QemuVmHandle;
  vms.push(vm);
  return vm;
}

test('a clone is snapshotted as its parent\'s memory plus its changed pages, and a clone of that goes on from its state', { timeout: 600_000 }, async () => {
  const assets = loadAssets();
  const backend = new QemuBackend();
  const id = crypto.randomBytes(6).toString('hex');
  const runDir = path.join(root, id);
  fs.mkdirSync(runDir);
  const scratch = path.join(runDir, 'scratch.img');
  await createScratchDisk(scratch);
  const memoryFile = `/dev/shm/shoal-${id}.ram`;
  shmFiles.push(memoryFile);
  const spec: VmSpec = {
    id,
    runDir,
    kernel: assets.vmlinuz,
    initrd: assets.initrd,
    cmdline: vmKernelCmdline(assets.cmdline, vmmTraits('qemu'), 'qps', 'qemu-slirp'),
    cpus: 1,
    memoryMiB: 256,
    drives: [
      { id: 'root', path: assets.rootfs, readOnly: true },
      { id: 'scratch', path: scratch, readOnly: false },
    ],
    accel: assets.accel,
    consoleLog: path.join(runDir, 'console.log'),
    memoryFile,
    net: { mac: '02:fc:00:00:00:01', userMode: { forwards: [] } },
  };
  const source = await backend.boot(spec);
  vms.push(source);
  const a = await connect(source);
  await sh(a, 'echo gen0 > /dev/shm/mem; echo gen0 > /mnt/scratch/disk; sync');

  // First generation: the VM's RAM is its own shared file (x-ignore-shared + a copy).
  const s1 = snapshotDir('s1');
  await source.pause();
  await source.snapshot({ stateFile: s1.state, memoryFile: s1.memory }, 'full');
  copySparse(scratch, s1.scratch);
  await source.resume();

  const child = await restore(backend, spec, s1, crypto.randomBytes(6).toString('hex'));
  assert.equal(child.memoryIsPrivate, true);
  const b = await connect(child);
  assert.equal(await sh(b, 'cat /dev/shm/mem /mnt/scratch/disk'), 'gen0\ngen0\n');
  await sh(b, 'echo gen1 > /dev/shm/mem; echo gen1 > /mnt/scratch/disk; head -c 4096 /dev/urandom > /dev/shm/noise; sync');
  const childNoise = await sh(b, 'md5sum < /dev/shm/noise');

  // The clone, running, is snapshotted; the disk is copied while it is stopped.
  const s2 = snapshotDir('s2');
  let diskCopiedWhilePaused = false;
  const result = await child.snapshotPrivate({ stateFile: s2.state, memoryFile: s2.memory }, {
    whilePaused: async () => {
      const status = (await child.qmp.execute('query-status')) as { status: string };
      diskCopiedWhilePaused = status.status !== 'running';
      copySparse(child.launch.drives.find((d) => d.id === 'scratch')!.path, s2.scratch);
    },
  });
  process.stdout.write(`# private snapshot ${JSON.stringify({ ...result, stateBytes: fs.statSync(s2.state).size, memoryAllocatedBytes: fs.statSync(s2.memory).blocks * 512 })}\n`);
  assert.ok(diskCopiedWhilePaused, 'the disk was copied while the source ran');
  assert.ok(result.pausedMs > 0 && result.pausedMs <= result.totalMs, JSON.stringify(result));
  // What it copied is what it changed since its restore, not its RAM.
  assert.equal(result.pages, 256 * 256);
  assert.ok(result.dirtyPages > 0 && result.dirtyPages < result.pages / 2, JSON.stringify(result));
  assert.equal(((await child.qmp.execute('query-status')) as { status: string }).status, 'running');
  // The state file holds device state only (RAM is in memory.raw): about a first generation's.
  assert.ok(fs.statSync(s2.state).size < fs.statSync(s1.state).size + 64 * 1024, `state.bin is ${fs.statSync(s2.state).size} bytes, the first generation's ${fs.statSync(s1.state).size}`);
  assert.equal(fs.statSync(s2.memory).size, 256 * 1024 * 1024);
  // Nothing is left in the VM's directory (the migration socket).
  assert.deepEqual(fs.readdirSync(child.launch.spec.runDir).filter((e) => e.startsWith('snapshot-')), []);

  // The clone goes on with its state and its session, and changes after the snapshot stay its own.
  assert.equal(await sh(b, 'cat /dev/shm/mem /mnt/scratch/disk'), 'gen1\ngen1\n');
  await sh(b, 'echo after > /dev/shm/mem; echo after > /mnt/scratch/disk; sync');
  await child.pause();
  await child.resume();
  assert.equal(await sh(b, 'cat /dev/shm/mem'), 'after\n');

  const grandchild = await restore(backend, spec, s2, crypto.randomBytes(6).toString('hex'));
  const c = await connect(grandchild);
  assert.equal(await sh(c, 'cat /dev/shm/mem /mnt/scratch/disk'), 'gen1\ngen1\n');
  assert.equal(await sh(c, 'md5sum < /dev/shm/noise'), childNoise);
  await sh(c, 'echo gen2 > /dev/shm/mem; echo gen2 > /mnt/scratch/disk; sync');
  assert.equal(await sh(b, 'cat /dev/shm/mem /mnt/scratch/disk'), 'after\nafter\n');
  assert.equal(await sh(a, 'cat /dev/shm/mem /mnt/scratch/disk'), 'gen0\ngen0\n');

  // And the grandchild, itself private, can be snapshotted again (depth 3).
  const s3 = snapshotDir('s3');
  await grandchild.snapshotPrivate({ stateFile: s3.state, memoryFile: s3.memory }, {
    whilePaused: async () => copySparse(grandchild.launch.drives.find((d) => d.id === 'scratch')!.path, s3.scratch),
  });
  const great = await restore(backend, spec, s3, crypto.randomBytes(6).toString('hex'));
  const d = await connect(great);
  assert.equal(await sh(d, 'cat /dev/shm/mem /mnt/scratch/disk; md5sum < /dev/shm/noise'), `gen2\ngen2\n${childNoise}`);
});
