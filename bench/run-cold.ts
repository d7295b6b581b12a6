/**
 * Benchmark: cold `shoal run` of a local image (boot, agent, image load, podman run, power off)
 * against the same kernel and initramfs booted by bare QEMU to the initramfs's init, measured in
 * the same run on the same host. Writes JSON to bench/results/run-cold.json and stdout.
 *
 *   npm run bench            (needs `shoal setup` done)
 *   RUNS=5 npm run bench
 *   TB_SIZES=32,0 npm run bench   also compare TCG translation cache sizes (SHOAL_TCG_TB_MIB; 0 is
 *                                 QEMU's default) on every path, interleaved round by round so
 *                                 that a busy host weighs on each setting alike (issue 24)
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadAssets } from '../src/assets/setup';
import { runUntilSerial } from '../src/assets/probe';
import { buildBusyboxDockerArchive } from '../test/helpers/images';
import { pssKiB } from '../test/helpers/process-memory';

const RUNS = Number(process.env.RUNS ?? 3);
const TB_SIZES = (process.env.TB_SIZES ?? '').split(',').filter((v) => v !== '').map((v) => {
  if (!/^\d+$/.test(v)) throw new Error(`TB_SIZES: not a size in MiB: ${v}`);
  return v;
});
const ROOT = path.resolve(__dirname, '..', '..');
const SHOAL = path.join(ROOT, 'bin', 'shoal');

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

async function bareQemuToInit(): Promise<number> {
  const assets = loadAssets();
  const args = [
    '-M', 'microvm', '-accel', assets.accel === 'kvm' ? 'kvm' : 'tcg', '-cpu', assets.accel === 'kvm' ? 'host' : 'max',
    '-m', '1024', '-smp', '1', '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio', '-no-reboot',
    '-kernel', assets.vmlinuz, '-initrd', assets.initrd, '-append', `${assets.cmdline} shoal.probe=1`,
  ];
  const result = await runUntilSerial('qemu-system-x86_64', args, 'SHOAL-PROBE-OK', 120_000);
  if (!result.matched) throw new Error(`bare QEMU did not reach init: ${result.output.slice(-300)}`);
  return result.ms;
}

function shoalRun(image: string, stateDir: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}): number {
  return shoalTimed(['run', '--rm', ...extra, `docker-archive:${image}`, '--', 'true'], stateDir, env).ms;
}

function shoalTimed(args: string[], stateDir: string, env: NodeJS.ProcessEnv = {}): { ms: number; stdout: string } {
  const t0 = process.hrtime.bigint();
  const result = spawnSync(SHOAL, args, {
    env: { ...process.env, SHOAL_STATE_DIR: stateDir, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 300_000,
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (result.status !== 0) throw new Error(`shoal ${args[0]} failed (${result.status}): ${result.stderr.toString().slice(-500)}`);
  return { ms, stdout: result.stdout.toString() };
}

interface TbRow {
  coldMs: number[];
  hitMs: number[];
  snapshotExecMs: number[];
  clonePssMiB: number[];
}

/**
 * One round of every path under one translation cache size: a cold run, an image-cache hit (the
 * entry saved by the first round), `snapshot run --exec` of a snapshot of an idle VM, and the PSS
 * of a clone's QEMU after two execs. Each size has its own state dir (its cache entry and snapshot).
 */
function tbRound(image: string, stateDir: string, tb: string, row: TbRow, first: boolean): void {
  const env = { SHOAL_TCG_TB_MIB: tb };
  row.coldMs.push(shoalRun(image, stateDir, ['--no-snapshot'], env));
  if (first) shoalRun(image, stateDir, [], env); // the miss that saves the entry
  row.hitMs.push(shoalRun(image, stateDir, [], env));
  if (first) {
    shoalTimed(['run', '-d', '--name', 'idle', `docker-archive:${image}`, '--', 'sleep', '1000000'], stateDir, env);
    shoalTimed(['snapshot', 'create', '--tag', 'idle', 'idle'], stateDir, env);
    shoalTimed(['rm', '-f', 'idle'], stateDir, env);
  }
  row.snapshotExecMs.push(shoalTimed(['snapshot', 'run', '--snapshot', 'idle', '--exec', '--', 'echo', 'hi'], stateDir, env).ms);
  shoalTimed(['snapshot', 'run', '--snapshot', 'idle', '--name', 'clone', '--rm'], stateDir, env);
  shoalTimed(['exec', 'clone', '--', 'true'], stateDir, env);
  shoalTimed(['exec', 'clone', '--', 'true'], stateDir, env);
  const vms = JSON.parse(shoalTimed(['ls', '--json'], stateDir, env).stdout) as Array<{ name: string; vmmPid?: number }>;
  const pid = vms.find((v) => v.name === 'clone')?.vmmPid;
  if (pid !== undefined) row.clonePssMiB.push(Math.round(pssKiB(pid).total / 1024));
  shoalTimed(['rm', '-f', 'clone'], stateDir, env);
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-bench-'));
  try {
    const image = await buildBusyboxDockerArchive(path.join(work, 'busybox.tar'));
    const bare: number[] = [];
    const cold: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      bare.push(await bareQemuToInit());
      cold.push(shoalRun(image, path.join(work, 'state'), ['--no-snapshot']));
    }
    // The image cache: one run that saves it, then runs that restore it.
    const cacheState = path.join(work, 'cache-state');
    const miss = shoalRun(image, cacheState);
    const hits: number[] = [];
    for (let i = 0; i < RUNS; i++) hits.push(shoalRun(image, cacheState));
    // Translation cache sizes, interleaved: round r runs every size before round r+1.
    const tbRows: Record<string, TbRow> = {};
    for (const tb of TB_SIZES) tbRows[tb] = { coldMs: [], hitMs: [], snapshotExecMs: [], clonePssMiB: [] };
    for (let i = 0; i < RUNS && TB_SIZES.length > 0; i++) {
      for (const tb of TB_SIZES) tbRound(image, path.join(work, `tb-${tb}`), tb, tbRows[tb]!, i === 0);
    }
    const tbSizes = Object.fromEntries(Object.entries(tbRows).map(([tb, row]) => [tb === '0' ? 'qemu-default' : `${tb}MiB`, {
      coldMedianMs: median(row.coldMs),
      hitMedianMs: median(row.hitMs),
      snapshotExecMedianMs: median(row.snapshotExecMs),
      clonePssMedianMiB: row.clonePssMiB.length > 0 ? median(row.clonePssMiB) : null,
      ...row,
    }]));
    const assets = loadAssets();
    const report = {
      benchmark: 'run-cold',
      date: new Date().toISOString(),
      host: { cpus: os.cpus().length, memGiB: Math.round(os.totalmem() / 2 ** 30), accel: assets.accel, kernel: assets.kernelVersion },
      runs: RUNS,
      baseline: { what: 'bare QEMU microvm, same kernel+initramfs, to init', ms: bare, medianMs: median(bare) },
      shoalRunCold: { what: 'shoal run --rm --no-snapshot docker-archive:busybox -- true (boot, load image, podman run, power off)', ms: cold, medianMs: median(cold) },
      ratio: Number((median(cold) / median(bare)).toFixed(2)),
      imageCache: {
        what: 'the same shoal run with the image cache: the first run saves it, later runs restore it',
        missMs: miss,
        hitMs: hits,
        hitMedianMs: median(hits),
        hitVsCold: Number((median(hits) / median(cold)).toFixed(2)),
      },
      ...(TB_SIZES.length > 0 ? { tcgTranslationCache: { what: 'the same paths per SHOAL_TCG_TB_MIB (qemu-default: none given), interleaved', sizes: tbSizes } } : {}),
    };
    fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'run-cold.json'), `${JSON.stringify(report, null, 2)}\n`);
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  process.stderr.write(`bench: ${err.message}\n`);
  process.exit(1);
});
