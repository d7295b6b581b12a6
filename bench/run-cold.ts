/**
 * Benchmark: cold `shoal run` of a local image (boot, agent, image load, podman run, power off)
 * against the same kernel and initramfs booted by bare QEMU to the initramfs's init, measured in
 * the same run on the same host. Writes JSON to bench/results/run-cold.json and stdout.
 *
 *   npm run bench            (needs `shoal setup` done)
 *   RUNS=5 npm run bench
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { loadAssets } from '../src/assets/setup';
import { runUntilSerial } from '../src/assets/probe';
import { buildBusyboxDockerArchive } from '../test/helpers/images';

const RUNS = Number(process.env.RUNS ?? 3);
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

function shoalRun(image: string, stateDir: string, extra: string[] = []): number {
  const t0 = process.hrtime.bigint();
  const result = spawnSync(SHOAL, ['run', '--rm', ...extra, `docker-archive:${image}`, '--', 'true'], {
    env: { ...process.env, SHOAL_STATE_DIR: stateDir },
    stdio: ['ignore', 'ignore', 'pipe'],
    timeout: 300_000,
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (result.status !== 0) throw new Error(`shoal run failed (${result.status}): ${result.stderr.toString()}`);
  return ms;
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
