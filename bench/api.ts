/**
 * Benchmark: the HTTP API against the CLI, in the same run on the same host. Writes JSON to
 * bench/results/api.json and stdout.
 *
 *   node dist/bench/api.js                  (needs `shoal setup`; boots VMs: run under the VM lock)
 *   RUNS=5 EXECS=20 node dist/bench/api.js
 *
 * Figures (ms):
 *   createExecDelete   POST /v1/sandboxes (image cache warm) + one exec + DELETE, through the SDK: p50, p95
 *   exec.api           POST .../exec of `true` through the SDK, buffered (p50, p95)
 *   exec.cli           `shoal exec NAME -- true` of the same VM (p50, p95)
 *   exec.cliVm         `shoal exec --vm NAME -- true` (p50, p95): issue 25's baseline (target api <= 1.3x)
 *   fork1              POST .../fork {count: 1} until the child answers an exec, through the SDK (p50)
 *   bareRestore        the VMM's own restore of a snapshot of the same sandbox (bench/lib/bare-restore.ts)
 *                      until its agent answers: fork1's baseline (target <= 1.5x)
 *   fork10             fork {count: 10} until every child answered an exec (target <= 3x fork1)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Shoal, type Sandbox } from '../sdk/src/index';
import { bareRestore } from './lib/bare-restore';
import { loadAssets } from '../src/assets/setup';
import { buildBusyboxDockerArchive } from '../test/helpers/images';

const RUNS = Number(process.env.RUNS ?? 5);
const EXECS = Number(process.env.EXECS ?? 10);
const FORK_WIDE = Number(process.env.FORK_WIDE ?? 10);
const ROOT = path.resolve(__dirname, '..', '..');
const SHOAL = path.join(ROOT, 'bin', 'shoal');

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round(sorted[index]! * 10) / 10;
}

const summary = (values: number[]) => ({ p50: percentile(values, 50), p95: percentile(values, 95), n: values.length });

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = process.hrtime.bigint();
  const value = await fn();
  return [Number(process.hrtime.bigint() - t0) / 1e6, value];
}

function cli(stateDir: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(SHOAL, args, { env: { ...process.env, SHOAL_STATE_DIR: stateDir, SHOAL_VMM: 'qemu' }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`shoal ${args.join(' ')}: ${stderr}`))));
  });
}

async function killAll(children: Array<Sandbox | Error>): Promise<void> {
  await Promise.all(children.map((c) => (c instanceof Error ? undefined : c.kill())));
}

async function main(): Promise<void> {
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sh-bench-api-'));
  let serve: ChildProcess | undefined;
  try {
    const image = `docker-archive:${await buildBusyboxDockerArchive(path.join(stateDir, 'busybox.tar'))}`;
    serve = spawn(SHOAL, ['serve', '--listen', '127.0.0.1:0', '--image-dir', stateDir], { env: { ...process.env, SHOAL_STATE_DIR: stateDir, SHOAL_VMM: 'qemu' }, stdio: ['ignore', 'pipe', 'ignore'] });
    const line = await new Promise<string>((resolve) => serve!.stdout!.once('data', (d: Buffer) => resolve(d.toString())));
    const { url, tokenFile } = JSON.parse(line) as { url: string; tokenFile: string };
    const shoal = new Shoal({ baseUrl: url, token: fs.readFileSync(tokenFile, 'utf8').trim() });

    // Warm the image cache (the first create boots and saves it), and keep that VM for the exec comparison.
    const [firstCreateMs, sbx] = await timed(() => shoal.sandboxes.create({ image, memoryMiB: 512 }));
    const cycles: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const [ms] = await timed(async () => {
        const s = await shoal.sandboxes.create({ image, memoryMiB: 512 });
        await s.commands.run('true');
        await s.kill();
      });
      cycles.push(ms);
    }
    const apiExec: number[] = [];
    const cliExec: number[] = [];
    const cliVmExec: number[] = [];
    for (let i = 0; i < EXECS; i++) {
      // Interleaved, so all three see the same host load.
      apiExec.push((await timed(() => sbx.commands.run('true')))[0]);
      cliExec.push((await timed(() => cli(stateDir, ['exec', sbx.info.name, '--', 'true'])))[0]);
      cliVmExec.push((await timed(() => cli(stateDir, ['exec', '--vm', sbx.info.name, '--', 'true'])))[0]);
    }

    // fork {count: 1} to the child's first exec answer, against the VMM's bare restore of a
    // snapshot of the same sandbox, interleaved run by run.
    await sbx.snapshot('bench-api-base');
    const forkOne: number[] = [];
    const bare: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const [ms, children] = await timed(async () => {
        const made = await sbx.fork({ count: 1 });
        await Promise.all(made.map((c) => (c instanceof Error ? Promise.reject(c) : c.commands.run('true'))));
        return made;
      });
      forkOne.push(ms);
      await killAll(children);
      bare.push(await bareRestore(path.join(stateDir, 'snapshots', 'bench-api-base'), stateDir));
    }
    const [forkWideMs, wide] = await timed(async () => {
      const made = await sbx.fork({ count: FORK_WIDE });
      await Promise.all(made.map((c) => (c instanceof Error ? Promise.reject(c) : c.commands.run('true'))));
      return made;
    });
    await killAll(wide);
    await sbx.kill();
    const api = summary(apiExec);
    const viaCli = summary(cliExec);
    const viaCliVm = summary(cliVmExec);
    const fork1 = summary(forkOne);
    const bareSummary = summary(bare);
    const ratio = (a: number, b: number): number => Math.round((a / b) * 100) / 100;
    const result = {
      host: { cpus: os.cpus().length, accel: loadAssets().accel, loadavg: os.loadavg().map((l) => Math.round(l * 100) / 100) },
      firstCreateMs: Math.round(firstCreateMs),
      createExecDelete: summary(cycles),
      exec: { api, cli: viaCli, cliVm: viaCliVm, ratio: ratio(api.p50, viaCli.p50), ratioToExecVm: ratio(api.p50, viaCliVm.p50), target: 1.3 },
      fork1: { ...fork1, bareRestore: bareSummary, ratio: ratio(fork1.p50, bareSummary.p50), target: 1.5 },
      forkWide: { count: FORK_WIDE, ms: Math.round(forkWideMs), ratioToFork1: ratio(forkWideMs, fork1.p50), target: 3 },
    };
    const text = `${JSON.stringify(result, null, 2)}\n`;
    fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'api.json'), text);
    process.stdout.write(text);
  } finally {
    serve?.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    spawn(SHOAL, ['rm', '-f', ...(fs.existsSync(path.join(stateDir, 'names')) ? fs.readdirSync(path.join(stateDir, 'names')) : [])], { env: { ...process.env, SHOAL_STATE_DIR: stateDir }, stdio: 'ignore' }).on('close', () => fs.rmSync(stateDir, { recursive: true, force: true }));
  }
}

void main();
