/**
 * Benchmark: a container through containerd and the shim (`ctr run --runtime io.containerd.shoal.v2`)
 * against `shoal run` of the same image, in the same run on the same host: time to the first
 * output line and to the end, interleaved round by round. containerd is the benchmark's own
 * (test/helpers/containerd.ts: its own root, state, socket and config in a temp dir).
 * Writes JSON to bench/results/ctr.json and stdout.
 *
 *   node dist/bench/ctr.js         (needs `shoal setup`, Debian's containerd; boots VMs: run it
 *   RUNS=3 node dist/bench/ctr.js   under the shared VM lock on a shared machine)
 *
 * Figures (ms, medians over RUNS):
 *   ctrRun            ctr run --rm of `echo hi`: first output, end (the shim boots a VM per task)
 *   shoalRunCold      shoal run --rm --no-snapshot of the same image archive: first output, end
 *   shoalRunCached    shoal run --rm with the image cache warm (a restore): first output, end
 *   ratios            ctrRun / shoalRunCold and ctrRun / shoalRunCached, first output
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TestContainerd } from '../test/helpers/containerd';
import { buildBusyboxDockerArchive } from '../test/helpers/images';
import { SHOAL_BIN, ShoalSandbox } from '../test/helpers/shoal-cli';

const RUNS = Number(process.env.RUNS ?? 3);
const ROOT = path.resolve(__dirname, '..', '..');
const NS = 'bench';
const IMAGE = 'localhost/shoal-bench-ctr:latest';

interface Timed { firstOutputMs: number; endMs: number }

/** Runs argv; the time of its first stdout byte and of its exit (non-zero exit: an error). */
function timedRun(argv: string[], env: NodeJS.ProcessEnv, timeoutMs = 300_000): Promise<Timed> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const ms = (): number => Number(process.hrtime.bigint() - t0) / 1e6;
    const child = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let first = -1;
    let stderr = '';
    child.stdout.on('data', () => { if (first < 0) first = ms(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      const end = ms();
      if (code !== 0 || first < 0) reject(new Error(`${argv.join(' ')}: exit ${code}, ${stderr.trim().slice(0, 500)}`));
      else resolve({ firstOutputMs: Math.round(first), endMs: Math.round(end) });
    });
  });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : Math.round((sorted[mid - 1]! + sorted[mid]!) / 2);
}

const summary = (runs: Timed[]) => ({ firstOutputMs: median(runs.map((r) => r.firstOutputMs)), endMs: median(runs.map((r) => r.endMs)), runs });

async function main(): Promise<void> {
  const sandbox = new ShoalSandbox('bench-ctr');
  const containerd = new TestContainerd('bench-ctr', sandbox);
  try {
    await containerd.start();
    const archive = await buildBusyboxDockerArchive(path.join(containerd.dir, 'image.tar'), IMAGE);
    const imported = await containerd.ctr(NS, ['images', 'import', archive]);
    if (imported.code !== 0) throw new Error(`ctr images import: ${imported.stderr}`);
    const image = `docker-archive:${archive}`;
    const shoal = (args: string[]): Promise<Timed> => timedRun([SHOAL_BIN, ...args], sandbox.env());
    // The image cache's first entry (a miss saves it), so that the cached runs below are hits.
    await shoal(['run', '--rm', image, '--', 'echo', 'hi']);
    const ctrRuns: Timed[] = [];
    const cold: Timed[] = [];
    const cached: Timed[] = [];
    for (let i = 0; i < RUNS; i++) {
      process.stderr.write(`bench/ctr: round ${i + 1} of ${RUNS}\n`);
      ctrRuns.push(await timedRun(['ctr', '-a', containerd.socket, '-n', NS, 'run', '--rm', '--runtime', 'io.containerd.shoal.v2', IMAGE, `bench-${i}`, 'echo', 'hi'], process.env));
      cold.push(await shoal(['run', '--rm', '--no-snapshot', image, '--', 'echo', 'hi']));
      cached.push(await shoal(['run', '--rm', image, '--', 'echo', 'hi']));
    }
    const ctrSummary = summary(ctrRuns);
    const coldSummary = summary(cold);
    const cachedSummary = summary(cached);
    const ratio = (a: number, b: number): number => Math.round((a / b) * 100) / 100;
    const result = {
      benchmark: 'ctr',
      date: new Date().toISOString(),
      host: { cpus: os.cpus().length, loadavg: os.loadavg().map((l) => Math.round(l * 100) / 100) },
      runs: RUNS,
      ctrRun: ctrSummary,
      shoalRunCold: coldSummary,
      shoalRunCached: cachedSummary,
      ratios: {
        ctrRunVsShoalRunColdFirstOutput: ratio(ctrSummary.firstOutputMs, coldSummary.firstOutputMs),
        ctrRunVsShoalRunCachedFirstOutput: ratio(ctrSummary.firstOutputMs, cachedSummary.firstOutputMs),
      },
    };
    const text = `${JSON.stringify(result, null, 2)}\n`;
    fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'ctr.json'), text);
    process.stdout.write(text);
  } finally {
    await containerd.stop();
    sandbox.cleanup();
    containerd.removeFiles();
  }
}

main().catch((err: Error) => {
  process.stderr.write(`${err.stack ?? err.message}\n`);
  process.exit(1);
});
