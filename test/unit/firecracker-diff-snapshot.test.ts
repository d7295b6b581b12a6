/**
 * Snapshots of restored Firecracker VMs (issue 13, docs/firecracker.md item 14): a Diff merged
 * onto a copy of the memory the VM came from, against the fake Firecracker, whose guest memory
 * and Full/Diff writes follow v1.16.1's vm.rs snapshot_memory_to_file (test/helpers/
 * fake-guest-memory.ts). Every memory file is compared byte for byte with a model of what the
 * guest's memory is: the parent's content plus what the guest wrote.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import type { RestoreSpec, RunningSnapshotOptions, SnapshotFiles, VmHandle, VmSpec } from '../../src/vmm/backend';
import { FirecrackerBackend, type FirecrackerVm } from '../../src/vmm/firecracker/backend';
import { writeFakeBinary, type Exchange } from '../helpers/firecracker-fake';
import { assertExchangesOnSpec, readExchanges } from '../helpers/firecracker-record';

const MiB = 1024 * 1024;
const PAGE = 4096;
const MEMORY_MIB = 4;

let dir: string;
let bin: string;
let record: string;
let n = 0;

before(() => {
  dir = fs.mkdtempSync(path.join('/tmp', 'fcd-')); // short: socket paths are limited to 107 bytes
  bin = writeFakeBinary(path.join(dir, 'bin'));
  for (const f of ['vmlinux', 'initrd.img', 'rootfs.ext4', 'scratch.img']) fs.writeFileSync(path.join(dir, f), 'x');
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));
beforeEach(() => {
  record = path.join(dir, `rec-${++n}.jsonl`);
  process.env.FAKE_FC_RECORD = record;
  delete process.env.FAKE_FC_VERSION;
  delete process.env.FAKE_FC_UFFD_SERVES;
});

function exchanges(): Exchange[] {
  return readExchanges(record);
}

/** The fake's record, plus the lines the test's cp wrapper and whilePaused add to it, in order. */
function calls(): string[] {
  return exchanges().filter((e) => e.method !== 'EXEC').map((e) => `${e.method} ${e.path}${e.method === 'PATCH' && e.path === '/vm' ? ` ${(e.body as { state: string }).state}` : ''}${e.path === '/snapshot/create' ? ` ${(e.body as { snapshot_type: string }).snapshot_type} ${e.status}` : ''}`);
}

function assertAllOnSpec(): void {
  assertExchangesOnSpec(exchanges());
}

function lastCreate(): { snapshot_type: string; mem_file_path: string } {
  const e = exchanges().filter((x) => x.path === '/snapshot/create').at(-1);
  assert.ok(e, 'no /snapshot/create was sent');
  return e.body as { snapshot_type: string; mem_file_path: string };
}

function vmSpec(id: string): VmSpec {
  return {
    id,
    runDir: path.join(dir, id),
    kernel: path.join(dir, 'vmlinux'),
    initrd: path.join(dir, 'initrd.img'),
    cmdline: 'console=ttyS0 reboot=k panic=1 shoal.transport=vsock',
    cpus: 1,
    memoryMiB: MEMORY_MIB,
    drives: [{ id: 'vda', path: path.join(dir, 'rootfs.ext4'), readOnly: true }, { id: 'vdb', path: path.join(dir, 'scratch.img'), readOnly: false }],
    accel: 'kvm',
    consoleLog: path.join(dir, id, 'console.log'),
  };
}

function restoreSpec(id: string, source: VmSpec, files: SnapshotFiles, memory: RestoreSpec['memory'] = { kind: 'file', path: files.memoryFile }): RestoreSpec {
  return { id, runDir: path.join(dir, id), snapshot: files, memory, source, drives: source.drives, consoleLog: path.join(dir, id, 'console.log') };
}

const backend = (over: ConstructorParameters<typeof FirecrackerBackend>[0] = {}): FirecrackerBackend =>
  new FirecrackerBackend({ binary: bin, startTimeoutMs: 5000, ...over });

/** What the guest's memory holds, kept beside the fake's (the expectation). */
class Model {
  constructor(readonly bytes: Buffer = Buffer.alloc(MEMORY_MIB * MiB)) {}
  clone(): Model {
    return new Model(Buffer.from(this.bytes));
  }
}

/** The running guest writes its memory (the fake's test-only control), and the model follows. */
async function guestWrite(vm: VmHandle, model: Model, offset: number, data: Buffer): Promise<void> {
  const socketPath = (vm as FirecrackerVm).client.socketPath;
  const payload = JSON.stringify({ offset, data: data.toString('base64') });
  const status = await new Promise<number>((resolve, reject) => {
    const req = http.request({ socketPath, method: 'PUT', path: '/_fake/guest/write', headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
    });
    req.on('error', reject);
    req.end(payload);
  });
  assert.equal(status, 204, 'the fake guest took the write');
  data.copy(model.bytes, offset);
}

/** A page of recognisable, non-zero content. */
function pattern(tag: string, length = PAGE): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (tag.charCodeAt(i % tag.length) + i) & 0xff || 1;
  return b;
}

function assertMemory(file: string, model: Model, label: string): void {
  const got = fs.readFileSync(file);
  assert.equal(got.length, model.bytes.length, `${label}: memory file size`);
  if (!got.equals(model.bytes)) {
    const page = [...Array(got.length / PAGE).keys()].find((i) => !got.subarray(i * PAGE, (i + 1) * PAGE).equals(model.bytes.subarray(i * PAGE, (i + 1) * PAGE)));
    assert.fail(`${label}: memory differs from the guest's, first at page ${page}`);
  }
}

function snapshotDir(name: string, under = dir): SnapshotFiles {
  const d = path.join(under, name);
  fs.mkdirSync(d, { recursive: true });
  return { stateFile: path.join(d, 'state.bin'), memoryFile: path.join(d, 'memory.raw') };
}

const progressOf = (lines: string[]): RunningSnapshotOptions => ({ whilePaused: async () => undefined, progress: (m) => lines.push(m) });

async function stop(vm: VmHandle): Promise<void> {
  vm.kill();
  await vm.exited;
}

/** A booted VM with some memory written, snapshotted (Full): the parent every test restores. */
async function parentSnapshot(id: string, writes: Array<[number, Buffer]>): Promise<{ source: VmSpec; files: SnapshotFiles; model: Model }> {
  const source = vmSpec(id);
  const vm = await backend().boot(source);
  const model = new Model();
  try {
    for (const [offset, data] of writes) await guestWrite(vm, model, offset, data);
    const lines: string[] = [];
    const files = snapshotDir(`${id}-snap`);
    await vm.snapshotRunning(files, progressOf(lines));
    assert.equal(lastCreate().snapshot_type, 'Full', 'a VM booted cold has no base: Full');
    assert.ok(lines.some((l) => /a Full snapshot: it was booted cold/.test(l)), lines.join(' | '));
    assertMemory(files.memoryFile, model, 'the booted parent (Full)');
    return { source, files, model };
  } finally {
    await stop(vm);
  }
}

describe('snapshots of a restored Firecracker VM: a Diff merged onto the memory it came from', () => {
  it('clone, its second snapshot (the dirty log was reset) and a clone of that (depth 2) are each byte-for-byte the guest\'s memory', async () => {
    const parent = await parentSnapshot('d1d1d1d1d1d1', [[0, pattern('p0')], [5 * PAGE, pattern('p5')], [100 * PAGE, pattern('p100', 3 * PAGE)]]);

    const clone = await backend().restore(restoreSpec('d2d2d2d2d2d2', parent.source, parent.files));
    const m1 = parent.model.clone();
    let s2: SnapshotFiles;
    try {
      const load = exchanges().find((e) => e.path === '/snapshot/load')!.body as Record<string, unknown>;
      assert.equal(load.track_dirty_pages, true, 'a restored VM is loaded with dirty-page tracking');
      // The parent's snapshot goes away (snapshot rm, image-cache eviction): the clone keeps its memory.
      fs.rmSync(path.dirname(parent.files.memoryFile), { recursive: true });

      await guestWrite(clone, m1, 5 * PAGE, pattern('c5'));
      await guestWrite(clone, m1, 200 * PAGE + 100, pattern('c200', PAGE + 50)); // across a page boundary
      const s1 = snapshotDir('d2-s1');
      await clone.snapshotRunning(s1, progressOf([]));
      assert.equal(lastCreate().snapshot_type, 'Diff');
      assertMemory(s1.memoryFile, m1, 'first snapshot of the clone (Diff onto the parent\'s memory)');

      // The dirty log restarts at every snapshot: the second Diff holds only what follows, and
      // must be merged onto the first snapshot's memory, not the parent's.
      await guestWrite(clone, m1, 0, pattern('c0'));
      await guestWrite(clone, m1, 300 * PAGE, pattern('c300'));
      fs.rmSync(path.dirname(s1.memoryFile), { recursive: true }); // that base goes away too: held open
      s2 = snapshotDir('d2-s2');
      await clone.snapshotRunning(s2, progressOf([]));
      assert.equal(lastCreate().snapshot_type, 'Diff');
      assertMemory(s2.memoryFile, m1, 'second snapshot of the clone (Diff onto the first)');
      assertAllOnSpec();
    } finally {
      await stop(clone);
    }

    const grandchild = await backend().restore(restoreSpec('d3d3d3d3d3d3', parent.source, s2));
    try {
      const m2 = m1.clone();
      await guestWrite(grandchild, m2, 5 * PAGE, pattern('g5'));
      await guestWrite(grandchild, m2, (MEMORY_MIB * MiB) - PAGE, pattern('glast'));
      const s3 = snapshotDir('d3-s1');
      await grandchild.snapshotRunning(s3, progressOf([]));
      assert.equal(lastCreate().snapshot_type, 'Diff');
      assertMemory(s3.memoryFile, m2, 'snapshot of a clone of a clone (depth 2)');
      assertAllOnSpec();
    } finally {
      await stop(grandchild);
    }
  });

  it('the pause covers only the Diff: the base is copied while the VM runs, before it is paused', async () => {
    const parent = await parentSnapshot('e1e1e1e1e1e1', [[PAGE, pattern('p1')]]);
    // A cp that takes its time and writes itself into the fake's record: where it falls among
    // the API calls, and that its time is not in the pause.
    const wrap = path.join(dir, 'slow-cp');
    fs.mkdirSync(wrap, { recursive: true });
    fs.writeFileSync(path.join(wrap, 'cp'), `#!/bin/sh\nfor last; do :; done\nsleep 0.6\necho '{"method":"CP","path":"'"$(basename "$last")"'","status":0,"problems":[],"responseProblems":[]}' >> "$FAKE_FC_RECORD"\nexec /bin/cp "$@"\n`, { mode: 0o755 });
    const clone = await backend().restore(restoreSpec('e2e2e2e2e2e2', parent.source, parent.files));
    const savedPath = process.env.PATH;
    try {
      const m = parent.model.clone();
      await guestWrite(clone, m, 7 * PAGE, pattern('c7'));
      const from = calls().length;
      process.env.PATH = `${wrap}:${savedPath}`;
      const files = snapshotDir('e2-s1');
      const timings = await clone.snapshotRunning(files, {
        whilePaused: async () => {
          fs.appendFileSync(record, `${JSON.stringify({ method: 'WHILE_PAUSED', path: '', status: 0, problems: [], responseProblems: [] })}\n`);
        },
      });
      process.env.PATH = savedPath;
      assert.deepEqual(calls().slice(from), [
        'CP memory.raw',
        'PATCH /vm Paused',
        'PUT /snapshot/create Diff 204',
        'WHILE_PAUSED ',
        'PATCH /vm Resumed',
      ]);
      assert.ok(timings.pausedMs < 600, `paused ${timings.pausedMs} ms: the 600 ms copy of the base is not in the pause`);
      assertMemory(files.memoryFile, m, 'the Diff merged onto the copied base');
      assertAllOnSpec();
    } finally {
      process.env.PATH = savedPath;
      await stop(clone);
    }
  });

  it('with Uffd the base is the file the page server serves', async () => {
    const parent = await parentSnapshot('f1f1f1f1f1f1', [[3 * PAGE, pattern('p3')], [9 * PAGE, pattern('p9')]]);
    process.env.FAKE_FC_UFFD_SERVES = parent.files.memoryFile;
    const socketPath = path.join(dir, 'f2.uffd.sock');
    fs.writeFileSync(socketPath, ''); // the fake only checks that the page server's socket is there
    const clone = await backend().restore(restoreSpec('f2f2f2f2f2f2', parent.source, parent.files, { kind: 'uffd', socketPath }));
    try {
      const m = parent.model.clone();
      await guestWrite(clone, m, 9 * PAGE, pattern('c9'));
      const files = snapshotDir('f2-s1');
      await clone.snapshotRunning(files, progressOf([]));
      assert.equal(lastCreate().snapshot_type, 'Diff');
      assertMemory(files.memoryFile, m, 'Diff of a Uffd-restored VM');
      assertAllOnSpec();
    } finally {
      await stop(clone);
    }
  });

  it('a snapshot that does not become the base (the throw-away after a bare pause) makes the next one Full, then Diffs again', async () => {
    const parent = await parentSnapshot('a1a1a1a1a1a1', [[2 * PAGE, pattern('p2')]]);
    const clone = await backend().restore(restoreSpec('a2a2a2a2a2a2', parent.source, parent.files));
    try {
      const m = parent.model.clone();
      await guestWrite(clone, m, 11 * PAGE, pattern('c11'));
      // A pause without a snapshot: the resume first takes a throw-away snapshot (item 4), which
      // resets the dirty log; a Diff onto the parent's memory would now miss page 11.
      await clone.pause();
      await clone.resume();
      await guestWrite(clone, m, 12 * PAGE, pattern('c12'));
      const lines: string[] = [];
      const s1 = snapshotDir('a2-s1');
      await clone.snapshotRunning(s1, progressOf(lines));
      assert.equal(lastCreate().snapshot_type, 'Full');
      assert.ok(lines.some((l) => /a Full snapshot: an earlier snapshot reset the dirty-page log/.test(l)), lines.join(' | '));
      assertMemory(s1.memoryFile, m, 'Full after the chain was broken');
      await guestWrite(clone, m, 13 * PAGE, pattern('c13'));
      const s2 = snapshotDir('a2-s2');
      await clone.snapshotRunning(s2, progressOf([]));
      assert.equal(lastCreate().snapshot_type, 'Diff');
      assertMemory(s2.memoryFile, m, 'Diff onto that Full');
      assertAllOnSpec();
    } finally {
      await stop(clone);
    }
  });

  it('a binary older than 1.13.0 (no track_dirty_pages on the load): the restored VM takes Full snapshots, and says why', async () => {
    process.env.FAKE_FC_VERSION = '1.12.0';
    const parent = await parentSnapshot('b1b1b1b1b1b1', [[4 * PAGE, pattern('p4')]]);
    // Same run directory as its source (gone): 1.12 has no vsock_override either.
    const spec = { ...restoreSpec('b1b1b1b1b1b1', parent.source, parent.files), runDir: parent.source.runDir, consoleLog: parent.source.consoleLog };
    await assert.rejects(backend({ trackDirtyPages: true }).restore(spec), /needs Firecracker >= 1\.13\.0 \(track_dirty_pages\); this one is 1\.12\.0/);
    const clone = await backend().restore(spec);
    try {
      const load = exchanges().filter((e) => e.path === '/snapshot/load').at(-1)!;
      assert.equal(load.status, 204);
      assert.ok(!('track_dirty_pages' in (load.body as object)));
      const m = parent.model.clone();
      await guestWrite(clone, m, 8 * PAGE, pattern('c8'));
      const lines: string[] = [];
      const s1 = snapshotDir('b1-s1');
      await clone.snapshotRunning(s1, progressOf(lines));
      assert.equal(lastCreate().snapshot_type, 'Full');
      assert.ok(lines.some((l) => /a Full snapshot: Firecracker 1\.12\.0 cannot track dirty pages/.test(l)), lines.join(' | '));
      assertMemory(s1.memoryFile, m, 'Full on 1.12');
      assertAllOnSpec();
    } finally {
      await stop(clone);
    }
  });
});

describe('a full disk during a restored VM\'s snapshot', { skip: process.getuid?.() === 0 ? false : 'needs root (mounts a tmpfs)' }, () => {
  it('the Diff does not fit: one line, no files left, the VM runs on, and the next snapshot (Full) is right', async () => {
    const parent = await parentSnapshot('c1c1c1c1c1c1', [[0, pattern('p0')]]);
    const clone = await backend().restore(restoreSpec('c2c2c2c2c2c2', parent.source, parent.files));
    const small = path.join(dir, 'small-c');
    fs.mkdirSync(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', small]);
    try {
      const m = parent.model.clone();
      await guestWrite(clone, m, 16 * PAGE, pattern('big', 2 * MiB)); // 2 MiB dirty: more than the 1 MiB there is
      const files = snapshotDir('s', small);
      const err = await clone.snapshotRunning(files, progressOf([])).then(() => null, (e: Error) => e);
      assert.ok(err, 'the snapshot failed');
      assert.equal(err.message.split('\n').length, 1, err.message);
      assert.match(err.message, /Create snapshot error: Cannot write memory file: .*No space left on device \(os error 28\)/);
      assert.deepEqual(fs.readdirSync(path.dirname(files.memoryFile)), [], 'no state or memory file that looks like a snapshot');
      assert.equal(calls().at(-1), 'PATCH /vm Resumed', 'resumed after the failure');
      await guestWrite(clone, m, 17 * PAGE, pattern('after'));
      const lines: string[] = [];
      const ok = snapshotDir('c2-ok');
      await clone.snapshotRunning(ok, progressOf(lines));
      assert.equal(lastCreate().snapshot_type, 'Full', 'a failed snapshot may have reset the dirty log: Full next');
      assertMemory(ok.memoryFile, m, 'the snapshot after the full disk');
      assertAllOnSpec();
    } finally {
      await stop(clone);
      execFileSync('umount', ['--lazy', small]);
    }
  });

  it('the base copy does not fit: one line, the VM was never paused, and the next snapshot is still a Diff', async () => {
    const parent = await parentSnapshot('c3c3c3c3c3c3', [[0, pattern('p-big', 2 * MiB)]]);
    const clone = await backend().restore(restoreSpec('c4c4c4c4c4c4', parent.source, parent.files));
    const small = path.join(dir, 'small-d');
    fs.mkdirSync(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', small]);
    try {
      const m = parent.model.clone();
      await guestWrite(clone, m, 600 * PAGE, pattern('c600'));
      const before = calls().length;
      const resetsBefore = clone.agentLinkResets;
      const files = snapshotDir('s', small);
      await assert.rejects(clone.snapshotRunning(files, progressOf([])), (e: Error) => {
        assert.equal(e.message, 'cannot copy to memory.raw: No space left on device');
        return true;
      });
      assert.deepEqual(calls().slice(before), [], 'never paused');
      // The supervisor reconnects the agent only when this moved: here its session goes on.
      assert.equal(clone.agentLinkResets, resetsBefore, 'no vsock reset: the agent link is not cut');
      assert.deepEqual(fs.readdirSync(path.dirname(files.memoryFile)), []);
      const ok = snapshotDir('c4-ok');
      await clone.snapshotRunning(ok, progressOf([]));
      assert.equal(lastCreate().snapshot_type, 'Diff');
      assertMemory(ok.memoryFile, m, 'the Diff after the failed copy');
      assertAllOnSpec();
    } finally {
      await stop(clone);
      execFileSync('umount', ['--lazy', small]);
    }
  });
});
