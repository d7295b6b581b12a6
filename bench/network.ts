/**
 * Benchmark: HTTP through a published port (busybox httpd in a shoal VM, in each network mode)
 * against the same busybox httpd run directly on the host, in the same run.
 * Latency: sequential small GETs; throughput: repeated GETs of a 4 MiB file.
 * Writes bench/results/network.json.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { buildBusyboxDockerArchive } from '../test/helpers/images';

const ROOT = path.resolve(__dirname, '..', '..');
const SHOAL = path.join(ROOT, 'bin', 'shoal');
const REQUESTS = Number(process.env.REQUESTS ?? 200);
const BIG_GETS = Number(process.env.BIG_GETS ?? 10);
const BIG_BYTES = 4 * 1024 * 1024;

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

function get(port: number, file: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: `/${file}`, agent: false }, (res) => {
      let bytes = 0;
      res.on('data', (d: Buffer) => (bytes += d.length));
      res.on('end', () => (res.statusCode === 200 ? resolve(bytes) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on('error', reject);
  });
}

async function waitServing(port: number): Promise<void> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    try {
      await get(port, 'small');
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

async function measure(port: number): Promise<{ latencyMsMedian: number; latencyMsP95: number; throughputMiBs: number }> {
  const latencies: number[] = [];
  for (let i = 0; i < REQUESTS; i++) {
    const t0 = process.hrtime.bigint();
    await get(port, 'small');
    latencies.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  latencies.sort((a, b) => a - b);
  const t0 = process.hrtime.bigint();
  let bytes = 0;
  for (let i = 0; i < BIG_GETS; i++) bytes += await get(port, 'big');
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return {
    latencyMsMedian: Number(latencies[Math.floor(latencies.length / 2)]!.toFixed(3)),
    latencyMsP95: Number(latencies[Math.floor(latencies.length * 0.95)]!.toFixed(3)),
    throughputMiBs: Number((bytes / 1048576 / seconds).toFixed(2)),
  };
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-bench-net-'));
  const state = path.join(work, 'state');
  let host: ChildProcess | undefined;
  try {
    const image = await buildBusyboxDockerArchive(path.join(work, 'busybox.tar'));
    // Host baseline: the same busybox httpd, serving the same files.
    const www = path.join(work, 'www');
    fs.mkdirSync(www);
    fs.writeFileSync(path.join(www, 'small'), 'ok\n');
    fs.writeFileSync(path.join(www, 'big'), Buffer.alloc(BIG_BYTES, 7));
    const hostPort = await freePort();
    host = spawn('/bin/busybox', ['httpd', '-f', '-p', `127.0.0.1:${hostPort}`, '-h', www], { stdio: 'ignore' });
    await waitServing(hostPort);
    const baseline = await measure(hostPort);

    // Each network mode in turn (one VM at a time): QEMU's slirp, the slirp4netns namespace that
    // rootless Firecracker uses, and bridged when running as root.
    const modes: Array<{ mode: string; what: string }> = [
      { mode: 'rootless', what: 'QEMU user-mode networking (slirp), published by a QEMU host forward' },
      { mode: 'slirp4netns', what: 'TAP in a user+network namespace with slirp4netns, published by a slirp4netns forward' },
    ];
    if (process.getuid?.() === 0) modes.push({ mode: 'bridged', what: 'TAP on the shoal0 bridge, published by the supervisor\'s proxy' });
    const results: Record<string, unknown> = {};
    const ratios: Record<string, { latencyMedian: number; throughput: number }> = {};
    for (const { mode, what } of modes) {
      const vmPort = await freePort();
      const script = `mkdir -p /www && echo ok > /www/small && dd if=/dev/zero of=/www/big bs=1048576 count=${BIG_BYTES / 1048576} 2>/dev/null && exec httpd -f -p 8080 -h /www`;
      const name = `bench-web-${mode}`;
      const run = spawnSync(SHOAL, ['run', '-d', '--name', name, '--network', mode, '-p', `127.0.0.1:${vmPort}:8080`, `docker-archive:${image}`, '--', 'sh', '-c', script], {
        env: { ...process.env, SHOAL_STATE_DIR: state },
        timeout: 300_000,
      });
      if (run.status !== 0) throw new Error(`shoal run --network ${mode} failed: ${run.stderr.toString()}`);
      try {
        await waitServing(vmPort);
        const vm = await measure(vmPort);
        results[mode] = { what: `busybox httpd in a shoal VM: ${what}, on loopback`, ...vm };
        ratios[mode] = {
          latencyMedian: Number((vm.latencyMsMedian / baseline.latencyMsMedian).toFixed(2)),
          throughput: Number((vm.throughputMiBs / baseline.throughputMiBs).toFixed(3)),
        };
      } finally {
        spawnSync(SHOAL, ['rm', '-f', name], { env: { ...process.env, SHOAL_STATE_DIR: state }, timeout: 60_000 });
      }
    }
    const report = {
      benchmark: 'network',
      date: new Date().toISOString(),
      host: { cpus: os.cpus().length },
      requests: REQUESTS,
      bigGets: BIG_GETS,
      baseline: { what: 'busybox httpd on the host, loopback', ...baseline },
      shoal: results,
      ratios,
    };
    fs.mkdirSync(path.join(ROOT, 'bench', 'results'), { recursive: true });
    fs.writeFileSync(path.join(ROOT, 'bench', 'results', 'network.json'), `${JSON.stringify(report, null, 2)}\n`);
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } finally {
    host?.kill();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err: Error) => {
  process.stderr.write(`bench: ${err.message}\n`);
  process.exit(1);
});
