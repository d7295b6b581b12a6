/**
 * Benchmark: snapshots, clones and fork(n) against a cold start measured in the same run on the
 * same host. Writes JSON to bench/results/snapshot.json and stdout.
 *
 *   node dist/bench/snapshot.js            (needs `shoal setup` done)
 *   RUNS=3 FORKS=1,5,10 node dist/bench/snapshot.js
 *
 * Figures (ms unless noted):
 *   coldToFirstExec   `run -d` of a fresh VM + the first `exec true` (the baseline)
 *   snapshotCreate    `snapshot create` of that running VM (and how long the source was paused)
 *   cloneToFirstExec  `snapshot run` + the first `exec true` in the clone
 *   fork[n]           `fork -n n` until every child answered an `exec true`
 *   pssPerCloneMiB    PSS of a clone's QEMU after fork (total, and of its guest RAM mapping)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildBusyboxDockerArchive } from '../test/helpers/images';
import { pssKiB } from '../test/helpers/process-memory';

const RUNS = Number(process.env.RUNS ?? 3);
const FORKS = (process.env.FORKS ?? '1,5,10').split(',').map(Number);
const ROOT = path.resolve(__dirname, '..', '..');
const SHOAL = path.join(ROOT, 'bin', 'shoal');

let stateDir = '';

function shoal(args: string[], timeoutMs = 300_000): Promise<{ ms: number; stdout: string }> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(SHOAL, args, { env: { ...process.env, SHOAL_STATE_DIR: stateDir }, stdio: ['ignore', 'pipe', 'pipe'] });
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

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}


async function vmmPids(): Promise<Map<string, number>> {
  const vms = JSON.parse((await shoal(['ls', '--json'])).stdout) as Array<{ name: string; vmmPid: number | null }>;
  return new Map(vms.filter((v) => v.vmmPid !== null).map((v) => [v.name, v.vmmPid!]));
}

const round = (v: number): number => Math.round(v * 10) / 10;

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sb-'));
  stateDir = path.join(work, 's');
  try {
    const image = `docker-archive:${await buildBusyboxDockerArchive(path.join(work, 'busybox.tar'))}`;
    const cold: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const run = await shoal(['run', '-d', '--name', `cold${i}`, image, '--', 'sleep', '3600']);
      const exec = await shoal(['exec', `cold${i}`, '--', 'true']);
      cold.push(run.ms + exec.ms);
      if (i > 0) await shoal(['rm', '-f', `cold${i}`]);
    }
    const sourcePss = pssKiB((await vmmPids()).get('cold0')!);

    const create: number[] = [];
    const paused: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const r = await shoal(['snapshot', 'create', 'cold0', '--tag', `t${i}`, '--json']);
      create.push(r.ms);
      paused.push((JSON.parse(r.stdout) as { timings: { pausedMs: number } }).timings.pausedMs);
    }
    const snapshotMiB = (JSON.parse((await shoal(['snapshot', 'ls', '--json'])).stdout) as Array<{ bytes: { memory: number; scratch: number } }>)[0]!.bytes;

    const clone: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const run = await shoal(['snapshot', 'run', '--snapshot', 't0', '--name', `clone${i}`]);
      const exec = await shoal(['exec', `clone${i}`, '--', 'true']);
      clone.push(run.ms + exec.ms);
      await shoal(['rm', '-f', `clone${i}`]);
    }

    const forks: Record<string, { ms: number; perChildMs: number; vsColdSequential: number; pssPerCloneMiB: number; guestRamPssPerCloneMiB: number }> = {};
    for (const n of FORKS) {
      const t0 = Date.now();
      const out = JSON.parse((await shoal(['fork', 'cold0', '-n', String(n), '--name-prefix', `f${n}`, '--json'], 600_000)).stdout) as { children: Array<{ name: string }> };
      await Promise.all(out.children.map((c) => shoal(['exec', c.name, '--', 'true'])));
      const ms = Date.now() - t0;
      const pids = await vmmPids();
      const pss = out.children.map((c) => pssKiB(pids.get(c.name)!));
      forks[String(n)] = {
        ms,
        perChildMs: round(ms / n),
        vsColdSequential: +(ms / (n * median(cold))).toFixed(3),
        pssPerCloneMiB: round(pss.reduce((a, b) => a + b.total, 0) / n / 1024),
        guestRamPssPerCloneMiB: round(pss.reduce((a, b) => a + b.guestRam, 0) / n / 1024),
      };
      await shoal(['rm', '-f', ...out.children.map((c) => c.name)], 300_000);
    }

    const result = {
      host: { cpus: os.cpus().length, memMiB: Math.round(os.totalmem() / 1048576) },
      runs: RUNS,
      coldToFirstExecMs: round(median(cold)),
      snapshotCreateMs: round(median(create)),
      snapshotSourcePausedMs: round(median(paused)),
      snapshotMiB: { memory: round(snapshotMiB.memory / 1048576), scratch: round(snapshotMiB.scratch / 1048576) },
      cloneToFirstExecMs: round(median(clone)),
      cloneVsCold: +(median(clone) / median(cold)).toFixed(3),
      fork: forks,
      sourcePssMiB: round(sourcePss.total / 1024),
      sourceGuestRamPssMiB: round(sourcePss.guestRam / 1024),
      pssPerCloneVsSource: +(Math.max(...Object.values(forks).map((f) => f.pssPerCloneMiB)) / (sourcePss.total / 1024)).toFixed(3),
      samples: { cold, create, paused, clone },
    };
    const text = `${JSON.stringify(result, null, 2)}\n`;
    fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'snapshot.json'), text);
    process.stdout.write(text);
  } finally {
    const names = fs.existsSync(path.join(stateDir, 'names')) ? fs.readdirSync(path.join(stateDir, 'names')) : [];
    if (names.length) await shoal(['rm', '-f', ...names]).catch(() => undefined);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  process.stderr.write(`${err.stack ?? err.message}\n`);
  process.exit(1);
});
