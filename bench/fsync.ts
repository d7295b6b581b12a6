/**
 * Benchmark: what making a published snapshot survive a power cut costs. A snapshot is written
 * into a temp directory and published by renaming it into place; with fsync (what shoal does,
 * src/state/atomic.ts) its files and directory are flushed before the rename and the parent after
 * it. The baseline is the same write and rename without any fsync, measured in the same run on the
 * same filesystem (the state directory's: SHOAL_STATE_DIR, default /var/lib/shoal, or its nearest
 * existing parent). No VM needed.
 * Writes JSON to bench/results/fsync.json and stdout.
 *
 *   node dist/bench/fsync.js
 *   RUNS=7 MEMORY_MIB=256 node dist/bench/fsync.js
 *
 * Figures (ms, medians over RUNS): for a snapshot of MEMORY_MIB of guest memory plus a 300 KiB
 * device state and a small manifest (the files `snapshot create` publishes; the scratch disk is a
 * reflink/sparse copy, left out here):
 *   baselineMs   write + rename, no fsync (the data is still in the page cache when it returns)
 *   fsyncMs      write + fsync of each file and the directory + rename + fsync of the parent
 *   ratio        fsyncMs / baselineMs
 * Each run starts after a `sync`, so writeback left by the previous run is not charged to it.
 */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fsyncDir, fsyncFilesIn, writeJsonAtomic } from '../src/state/atomic';
import { stateDir } from '../src/util/paths';

const RUNS = Number(process.env.RUNS ?? 7);
const MEMORY_MIB = Number(process.env.MEMORY_MIB ?? 256);
const ROOT = path.resolve(__dirname, '..', '..');
const CHUNK = 1024 * 1024;

/** Guest memory is not all zeros: a mix of random pages and zero pages, written in 1 MiB pieces as QEMU's migration stream is. */
function writeMemory(file: string, chunk: Buffer, zero: Buffer): void {
  const fd = fs.openSync(file, 'w', 0o600);
  try {
    for (let i = 0; i < MEMORY_MIB; i++) fs.writeSync(fd, i % 4 === 3 ? zero : chunk);
  } finally {
    fs.closeSync(fd);
  }
}

function writeSnapshot(dir: string, chunk: Buffer, zero: Buffer): void {
  fs.mkdirSync(dir, { mode: 0o700 });
  writeMemory(path.join(dir, 'memory.raw'), chunk, zero);
  fs.writeFileSync(path.join(dir, 'vmstate'), crypto.randomBytes(300 * 1024), { mode: 0o600 });
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify({ tag: 'bench', memoryMiB: MEMORY_MIB }), { mode: 0o600 });
}

function publish(work: string, name: string, withFsync: boolean, chunk: Buffer, zero: Buffer): number {
  execFileSync('sync');
  const temp = path.join(work, `.tmp-${name}`);
  const target = path.join(work, name);
  const t0 = process.hrtime.bigint();
  writeSnapshot(temp, chunk, zero);
  if (withFsync) fsyncFilesIn(temp);
  fs.renameSync(temp, target);
  if (withFsync) fsyncDir(work);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  fs.rmSync(target, { recursive: true, force: true });
  return ms;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

const round = (v: number): number => Math.round(v * 10) / 10;

function main(): void {
  // The state directory's filesystem; without creating the state directory if it is not there.
  let base = stateDir();
  while (!fs.existsSync(base)) base = path.dirname(base);
  const work = fs.mkdtempSync(path.join(base, '.bench-fsync-'));
  const filesystem = execFileSync('df', ['--output=fstype,source', work], { encoding: 'utf8' }).trim().split('\n').pop()!.trim();
  const chunk = crypto.randomBytes(CHUNK);
  const zero = Buffer.alloc(CHUNK);
  const baseline: number[] = [];
  const synced: number[] = [];
  const manifest: number[] = [];
  const manifestBaseline: number[] = [];
  try {
    // One of each first, not counted: the first writes of a run pay for allocating the page cache.
    publish(work, 'warm-b', false, chunk, zero);
    publish(work, 'warm-s', true, chunk, zero);
    for (let i = 0; i < RUNS; i++) {
      // Alternate which goes first, so neither always runs on a warmer or cooler disk.
      if (i % 2 === 0) {
        baseline.push(publish(work, `b${i}`, false, chunk, zero));
        synced.push(publish(work, `s${i}`, true, chunk, zero));
      } else {
        synced.push(publish(work, `s${i}`, true, chunk, zero));
        baseline.push(publish(work, `b${i}`, false, chunk, zero));
      }
      // The image-cache manifest and records: a small JSON file, atomic with fsync, against a plain write.
      const t0 = process.hrtime.bigint();
      writeJsonAtomic(path.join(work, 'manifest.json'), { i, entries: Array.from({ length: 20 }, (_, n) => ({ n, key: crypto.randomBytes(16).toString('hex') })) });
      manifest.push(Number(process.hrtime.bigint() - t0) / 1e6);
      const t1 = process.hrtime.bigint();
      fs.writeFileSync(path.join(work, 'manifest-plain.json'), JSON.stringify({ i }));
      manifestBaseline.push(Number(process.hrtime.bigint() - t1) / 1e6);
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
  const result = {
    filesystem,
    directory: base,
    memoryMiB: MEMORY_MIB,
    runs: RUNS,
    snapshotPublish: {
      baselineMs: round(median(baseline)),
      fsyncMs: round(median(synced)),
      costMs: round(median(synced) - median(baseline)),
      ratio: Math.round((median(synced) / median(baseline)) * 100) / 100,
      baselineMiBps: round(MEMORY_MIB / (median(baseline) / 1000)),
      fsyncMiBps: round(MEMORY_MIB / (median(synced) / 1000)),
      allBaselineMs: baseline.map(round),
      allFsyncMs: synced.map(round),
    },
    smallManifest: {
      baselineMs: Math.round(median(manifestBaseline) * 1000) / 1000,
      atomicFsyncMs: Math.round(median(manifest) * 1000) / 1000,
    },
  };
  const text = `${JSON.stringify(result, null, 2)}\n`;
  fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'fsync.json'), text);
  process.stdout.write(text);
}

main();
