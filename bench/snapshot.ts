/**
 * Benchmark: snapshots, clones and fork(n), each against a baseline measured in the same run on
 * the same host. Writes JSON to bench/results/snapshot.json and stdout.
 *
 *   node dist/bench/snapshot.js            (needs `shoal setup` done; boots VMs: run it under
 *                                           the shared VM lock on a shared machine)
 *   RUNS=3 FORKS=1,5,10,20 MEMORY=1024 node dist/bench/snapshot.js
 *
 * Figures (ms unless noted; medians over RUNS):
 *   coldToFirstExec       `run -d --no-snapshot` + the first `exec --vm true` (baseline of clones)
 *   bareRestore           one qemu-system-x86_64 started here with `-incoming` on the same snapshot
 *                         files (the clone's own argv), until its guest agent answers a HELLO:
 *                         the VMM's own restore, the baseline of a clone's start
 *   cloneToFirstExecVm    `snapshot run` + the first `exec --vm true`
 *   cloneToFirstExec      `snapshot run` + the first `exec true` (in the container)
 *   exec / execVm         `exec true` (container) against `exec --vm true`, in a running VM
 *   fork[n]               `fork -n n` of a first-generation VM until every child answered `exec --vm true`
 *   pssPerChildMiB[d]     PSS of a child's QEMU at depth d (1: children of the widest fork of a
 *                         first-generation VM, 2: children of a depth-1 child, 3: of a depth-2 child),
 *                         siblings alive; supervisorMiB beside it: the child's supervisor
 *   snapshotFirstGen      `snapshot create` of a booted VM: source pause and total
 *   snapshotDepth2        `snapshot create` of a depth-2 clone (a copy through a helper QEMU)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { SnapshotManifest } from '../src/snapshot/store';
import { bareRestore } from './lib/bare-restore';
import { buildBusyboxDockerArchive } from '../test/helpers/images';
import { pssKiB } from '../test/helpers/process-memory';

const RUNS = Number(process.env.RUNS ?? 3);
const FORKS = (process.env.FORKS ?? '1,5,10,20').split(',').map(Number);
const MEMORY = Number(process.env.MEMORY ?? 1024);
const ROOT = path.resolve(__dirname, '..', '..');
const SHOAL = path.join(ROOT, 'bin', 'shoal');

let stateDir = '';

function shoal(args: string[], timeoutMs = 300_000): Promise<{ ms: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(SHOAL, args, { env: { ...process.env, SHOAL_STATE_DIR: stateDir, SHOAL_VMM: 'qemu' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (code !== 0) reject(new Error(`shoal ${args.join(' ')} failed (${code}): ${stderr}`));
      else resolve({ ms, stdout });
    });
  });
}

/** Progress on stderr: the benchmark runs for minutes. */
function step(message: string): void {
  process.stderr.write(`bench/snapshot: ${message}\n`);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

const round = (v: number): number => Math.round(v * 10) / 10;
const ratio = (a: number, b: number): number => +(a / b).toFixed(3);

async function vmPids(): Promise<Map<string, { vmm: number; supervisor: number }>> {
  const vms = JSON.parse((await shoal(['ls', '--json'])).stdout) as Array<{ name: string; pid: number | null; vmmPid: number | null }>;
  return new Map(vms.filter((v) => v.vmmPid !== null && v.pid !== null).map((v) => [v.name, { vmm: v.vmmPid!, supervisor: v.pid! }]));
}

/**
 * Mean PSS (MiB) of these VMs' QEMU processes (in all, and of their guest-RAM mapping) and of
 * their supervisors: a child's whole host cost is totalMiB + supervisorMiB.
 */
async function pssPerVm(names: string[]): Promise<{ totalMiB: number; guestRamMiB: number; supervisorMiB: number }> {
  const pids = await vmPids();
  const each = names.map((n) => pssKiB(pids.get(n)!.vmm));
  const supervisors = names.map((n) => pssKiB(pids.get(n)!.supervisor).total);
  return {
    totalMiB: round(each.reduce((a, b) => a + b.total, 0) / names.length / 1024),
    guestRamMiB: round(each.reduce((a, b) => a + b.guestRam, 0) / names.length / 1024),
    supervisorMiB: round(supervisors.reduce((a, b) => a + b, 0) / names.length / 1024),
  };
}

/** `fork -n n` until every child answered `exec --vm true`; returns the wall time and the children. */
async function fork(source: string, n: number, prefix: string): Promise<{ ms: number; children: string[]; snapshotMs: number }> {
  const t0 = Date.now();
  const out = JSON.parse((await shoal(['fork', source, '-n', String(n), '--name-prefix', prefix, '--json'], 600_000)).stdout) as { snapshotMs: number; children: Array<{ name: string }> };
  const children = out.children.map((c) => c.name);
  await Promise.all(children.map((c) => shoal(['exec', '--vm', c, '--', 'true'])));
  return { ms: Date.now() - t0, children, snapshotMs: out.snapshotMs };
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-'));
  stateDir = path.join(work, 's');
  try {
    const image = `docker-archive:${await buildBusyboxDockerArchive(path.join(work, 'busybox.tar'))}`;
    const mem = ['--memory', String(MEMORY)];

    // Baseline: a cold boot, no image cache.
    step('cold runs (baseline)');
    const cold: number[] = [];
    for (let i = 0; i < Math.min(RUNS, 2); i++) {
      const run = await shoal(['run', '-d', '--no-snapshot', ...mem, '--name', `cold${i}`, image, '--', 'sleep', '3600']);
      const exec = await shoal(['exec', '--vm', `cold${i}`, '--', 'true']);
      cold.push(run.ms + exec.ms);
      if (i > 0) await shoal(['rm', '-f', `cold${i}`]);
    }
    const sourcePss = await pssPerVm(['cold0']);

    // exec into the container against exec --vm, in the same running VM.
    step('exec into the container against exec --vm');
    const execContainer: number[] = [];
    const execVm: number[] = [];
    for (let i = 0; i < Math.max(RUNS, 5); i++) {
      execVm.push((await shoal(['exec', '--vm', 'cold0', '--', 'true'])).ms);
      execContainer.push((await shoal(['exec', 'cold0', '--', 'true'])).ms);
    }

    // Snapshot of a first-generation VM.
    step('snapshots of a first-generation VM');
    const firstGen: Array<{ pausedMs: number; totalMs: number; cliMs: number }> = [];
    for (let i = 0; i < RUNS; i++) {
      const r = await shoal(['snapshot', 'create', 'cold0', '--tag', `t${i}`, '--json']);
      const timings = (JSON.parse(r.stdout) as SnapshotManifest).timings;
      firstGen.push({ pausedMs: timings.pausedMs, totalMs: timings.totalMs, cliMs: round(r.ms) });
    }
    const snapshotBytes = (JSON.parse(fs.readFileSync(path.join(stateDir, 'snapshots', 't0', 'snapshot.json'), 'utf8')) as SnapshotManifest).bytes;

    // The VMM's own restore of the same files, against a clone's start.
    step('bare QEMU restores, then clones to first exec');
    const bare: number[] = [];
    for (let i = 0; i < RUNS; i++) bare.push(await bareRestore(path.join(stateDir, 'snapshots', 't0'), work));
    const cloneVm: number[] = [];
    const cloneContainer: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const run = await shoal(['snapshot', 'run', '--snapshot', 't0', '--name', `cv${i}`]);
      const exec = await shoal(['exec', '--vm', `cv${i}`, '--', 'true']);
      cloneVm.push(run.ms + exec.ms);
      const run2 = await shoal(['snapshot', 'run', '--snapshot', 't0', '--name', `cc${i}`]);
      const exec2 = await shoal(['exec', `cc${i}`, '--', 'true']);
      cloneContainer.push(run2.ms + exec2.ms);
      await shoal(['rm', '-f', `cv${i}`, `cc${i}`]);
    }

    // fork -n 1, 5, 10 of the first-generation VM; PSS per child at depth 1 from the largest.
    step(`fork -n ${FORKS.join(', ')}`);
    const forks: Record<string, { ms: number; perChildMs: number; snapshotMs: number }> = {};
    let depth1: { totalMiB: number; guestRamMiB: number; supervisorMiB: number } | undefined;
    let keep = '';
    for (const n of FORKS) {
      const f = await fork('cold0', n, `f${n}`);
      forks[String(n)] = { ms: f.ms, perChildMs: round(f.ms / n), snapshotMs: f.snapshotMs };
      if (n === Math.max(...FORKS)) {
        depth1 = await pssPerVm(f.children);
        keep = f.children[0]!;
        await shoal(['rm', '-f', ...f.children.slice(1)], 300_000);
      } else await shoal(['rm', '-f', ...f.children], 300_000);
    }

    // Depth 2 and 3: a child forked again, a grandchild forked again (2 children each).
    step('forks at depth 2 and 3');
    const d2 = await fork(keep, 2, 'd2');
    const depth2 = await pssPerVm(d2.children);
    const d3 = await fork(d2.children[0]!, 2, 'd3');
    const depth3 = await pssPerVm(d3.children);

    // Snapshot of a depth-2 clone (a copy through a helper QEMU).
    step('snapshots of a depth-2 clone');
    const deep: Array<{ pausedMs: number; totalMs: number; cliMs: number }> = [];
    for (let i = 0; i < RUNS; i++) {
      const r = await shoal(['snapshot', 'create', d2.children[1]!, '--tag', `deep${i}`, '--json']);
      const timings = (JSON.parse(r.stdout) as SnapshotManifest).timings;
      deep.push({ pausedMs: timings.pausedMs, totalMs: timings.totalMs, cliMs: round(r.ms) });
    }
    const deepBytes = (JSON.parse(fs.readFileSync(path.join(stateDir, 'snapshots', 'deep0', 'snapshot.json'), 'utf8')) as SnapshotManifest).bytes;

    const coldMs = median(cold);
    const bareMs = median(bare);
    const forkMax = forks[String(Math.max(...FORKS))]!;
    const forkMin = forks[String(Math.min(...FORKS))]!;
    const result = {
      host: { cpus: os.cpus().length, memMiB: Math.round(os.totalmem() / 1048576) },
      runs: RUNS,
      guestMemoryMiB: MEMORY,
      coldToFirstExecMs: round(coldMs),
      bareQemuRestoreToAgentMs: round(bareMs),
      cloneToFirstExecVmMs: round(median(cloneVm)),
      cloneToFirstExecMs: round(median(cloneContainer)),
      execVmMs: round(median(execVm)),
      execContainerMs: round(median(execContainer)),
      fork: forks,
      pssPerChildMiB: { depth1, depth2, depth3 },
      sourcePssMiB: sourcePss,
      snapshotFirstGen: { pausedMs: median(firstGen.map((s) => s.pausedMs)), totalMs: median(firstGen.map((s) => s.totalMs)), bytes: snapshotBytes },
      snapshotDepth2: { pausedMs: median(deep.map((s) => s.pausedMs)), totalMs: median(deep.map((s) => s.totalMs)), bytes: deepBytes },
      ratios: {
        cloneToFirstExecVmVsBareRestore: { value: ratio(median(cloneVm), bareMs), target: '<= 1.5' },
        execContainerVsExecVm: { value: ratio(median(execContainer), median(execVm)), target: '<= 1.3' },
        cloneToFirstExecVsCold: { value: ratio(median(cloneContainer), coldMs), target: '<= 0.05' },
        fork10VsFork1: forks['10'] ? { value: ratio(forks['10'].ms, forkMin.ms), target: '<= 3' } : null,
        fork20VsFork1: forks['20'] ? { value: ratio(forks['20'].ms, forkMin.ms), target: '<= 6' } : null,
        forkWidestVsFork1: { n: Math.max(...FORKS), value: ratio(forkMax.ms, forkMin.ms) },
        pssPerChildVsGuestRam: { value: ratio(Math.max(depth1!.totalMiB, depth2.totalMiB, depth3.totalMiB), MEMORY), target: '<= 0.125' },
        hostMemoryPerChildAtWidestVsGuestRam: { n: Math.max(...FORKS), value: ratio(depth1!.totalMiB + depth1!.supervisorMiB, MEMORY), target: '<= 0.125' },
      },
      samples: { cold, bare, cloneVm, cloneContainer, execVm, execContainer, firstGen, deep },
    };
    const text = `${JSON.stringify(result, null, 2)}\n`;
    fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'snapshot.json'), text);
    process.stdout.write(text);
  } finally {
    const names = fs.existsSync(path.join(stateDir, 'names')) ? fs.readdirSync(path.join(stateDir, 'names')) : [];
    if (names.length) await shoal(['rm', '-f', ...names], 300_000).catch(() => undefined);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

// A promise that never settles would let Node exit 0 with no result: say so instead.
process.on('exit', (code) => {
  if (code === 0 && !finished) {
    process.stderr.write('bench/snapshot: ended before it finished (a wait that never settled)\n');
    process.exitCode = 1;
  }
});
let finished = false;

main().then(() => { finished = true; }).catch((err: Error) => {
  process.stderr.write(`${err.stack ?? err.message}\n`);
  process.exit(1);
});
