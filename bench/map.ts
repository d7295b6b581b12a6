/**
 * Benchmark: a `--map` directory (FUSE served by the host) against the same operations on the
 * host directory directly, in the same run, with the same busybox script. A third column runs
 * the script on a directory local to the guest, to tell FUSE's cost from the emulated CPU's.
 * Sequential write (dd, fsync at the end) and read in MB/s; create and stat (a cold lookup of a
 * name the guest has not seen) per operation. Timing is read from /proc/uptime (10 ms steps),
 * so each phase is sized to last well over a second. Writes bench/results/map.json.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildBusyboxDockerArchive } from '../test/helpers/images';

const ROOT = path.resolve(__dirname, '..', '..');
const SHOAL = path.join(ROOT, 'bin', 'shoal');
const MB = Number(process.env.MB ?? 64);
const OPS = Number(process.env.OPS ?? 400);

/** Prints `phase centiseconds` for write, read, create and stat in directory $1. */
const SCRIPT = `
D=$1
now() { read u _ < /proc/uptime; echo "\${u%.*}\${u#*.}"; }
a=$(now); dd if=/dev/zero of=$D/seqw bs=1048576 count=${MB} conv=fsync 2>/dev/null; b=$(now); echo "write $((b-a))"
a=$(now); dd if=$D/seqr of=/dev/null bs=1048576 2>/dev/null; b=$(now); echo "read $((b-a))"
a=$(now); i=0; while [ $i -lt ${OPS} ]; do : > $D/c$i; i=$((i+1)); done; b=$(now); echo "create $((b-a))"
a=$(now); i=0; while [ $i -lt ${OPS} ]; do [ -e $D/s$i ] || echo "missing s$i"; i=$((i+1)); done; b=$(now); echo "stat $((b-a))"
`;

/** The files the read and stat phases find: made beforehand, so the guest has no cached copy. */
function prepare(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'seqr'), Buffer.alloc(MB * 1048576, 3));
  for (let i = 0; i < OPS; i++) fs.writeFileSync(path.join(dir, `s${i}`), '');
}

interface Figures { writeMBs: number; readMBs: number; createUs: number; statUs: number }

function figures(output: string, label: string): Figures {
  const cs = (phase: string): number => {
    const match = new RegExp(`^${phase} (\\d+)$`, 'm').exec(output);
    if (!match) throw new Error(`${label}: no ${phase} figure in ${JSON.stringify(output)}`);
    // A phase shorter than one tick still took some time.
    return Math.max(Number(match[1]), 1);
  };
  if (/missing/.test(output)) throw new Error(`${label}: stat found files missing`);
  return {
    writeMBs: Number((MB / (cs('write') / 100)).toFixed(1)),
    readMBs: Number((MB / (cs('read') / 100)).toFixed(1)),
    createUs: Math.round((cs('create') * 10_000) / OPS),
    statUs: Math.round((cs('stat') * 10_000) / OPS),
  };
}

function ratios(a: Figures, b: Figures): Record<string, number> {
  return {
    write: Number((a.writeMBs / b.writeMBs).toFixed(3)),
    read: Number((a.readMBs / b.readMBs).toFixed(3)),
    create: Number((a.createUs / b.createUs).toFixed(2)),
    stat: Number((a.statUs / b.statUs).toFixed(2)),
  };
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-bench-map-'));
  const env = { ...process.env, SHOAL_STATE_DIR: path.join(work, 'state') };
  try {
    const image = await buildBusyboxDockerArchive(path.join(work, 'busybox.tar'));
    const hostDir = path.join(work, 'host');
    const mappedDir = path.join(work, 'mapped');
    prepare(hostDir);
    prepare(mappedDir);
    const host = spawnSync('/bin/busybox', ['sh', '-c', SCRIPT, 'sh', hostDir], { timeout: 300_000 });
    if (host.status !== 0) throw new Error(`host run failed: ${host.stderr.toString()}`);
    const baseline = figures(host.stdout.toString(), 'host');

    // One VM: the mapped directory, then a directory on the guest's own disk.
    const guestScript = `sh -c '${SCRIPT.replaceAll("'", `'"'"'`)}' sh /m && echo --- && mkdir /local && ` +
      `dd if=/dev/zero of=/local/seqr bs=1048576 count=${MB} 2>/dev/null && i=0 && while [ $i -lt ${OPS} ]; do : > /local/s$i; i=$((i+1)); done && ` +
      `sh -c '${SCRIPT.replaceAll("'", `'"'"'`)}' sh /local`;
    const run = spawnSync(SHOAL, ['run', '--rm', '--name', 'bench-map', '--map', `${mappedDir}:/m`, `docker-archive:${image}`, 'sh', '-c', guestScript], {
      env,
      timeout: 900_000,
    });
    if (run.status !== 0) throw new Error(`shoal run failed: ${run.stderr.toString()}`);
    const [mappedOut = '', localOut = ''] = run.stdout.toString().split('---');
    const mapped = figures(mappedOut, 'mapped');
    const local = figures(localOut, 'guest-local');
    const report = {
      benchmark: 'map',
      date: new Date().toISOString(),
      host: { cpus: os.cpus().length },
      sizeMB: MB,
      operations: OPS,
      baseline: { what: 'the same busybox script on the host directory directly', ...baseline },
      shoal: { what: 'the script in a shoal container on a --map directory (FUSE over the agent link)', ...mapped },
      guestLocal: { what: 'the script in the same container on its own disk (the emulated CPU, no FUSE)', ...local },
      // > 1 is faster than the baseline for write/read; for create/stat, the factor of slowdown.
      ratiosToHost: ratios(mapped, baseline),
      ratiosToGuestLocal: ratios(mapped, local),
    };
    fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'map.json'), `${JSON.stringify(report, null, 2)}\n`);
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } finally {
    spawnSync(SHOAL, ['rm', '-f', 'bench-map'], { env, timeout: 60_000 });
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  process.stderr.write(`bench: ${err.message}\n`);
  process.exit(1);
});
