/**
 * The baseline of every clone figure: one qemu-system-x86_64 started by the benchmark itself with
 * `-incoming` on a snapshot's own files (the clone's argv, built by the same builder), timed until
 * its guest agent answers a HELLO. This is the VMM's own restore, with nothing of shoal's around it.
 */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { openAgentSession } from '../../src/host/agent-session';
import type { SnapshotManifest } from '../../src/snapshot/store';
import type { VmHandle } from '../../src/vmm/backend';
import { buildQemuArgv, qemuPaths } from '../../src/vmm/qemu/argv';
import { QmpClient } from '../../src/vmm/qemu/qmp';
import { spawnTied } from '../../src/util/process';

/** Milliseconds from QEMU's spawn to the restored guest agent's HELLO; `work` holds a scratch copy. */
export async function bareRestore(snapshotDir: string, work: string): Promise<number> {
  const manifest = JSON.parse(fs.readFileSync(path.join(snapshotDir, 'snapshot.json'), 'utf8')) as SnapshotManifest;
  const runDir = fs.mkdtempSync(path.join(work, 'bare-'));
  const scratch = path.join(runDir, 'scratch.img');
  execFileSync('cp', ['--reflink=auto', '--sparse=always', path.join(snapshotDir, 'scratch.img'), scratch]);
  const paths = qemuPaths(runDir);
  const spec = { ...manifest.vmSpec, runDir, id: crypto.randomBytes(6).toString('hex') };
  const argv = buildQemuArgv({
    spec,
    drives: spec.drives.map((d) => (d.id === 'scratch' ? { ...d, path: scratch } : d)),
    consoleLog: path.join(runDir, 'console.log'),
    paths,
    memory: { path: path.join(snapshotDir, 'memory.raw'), share: false },
    incoming: true,
    ...(spec.net ? { net: spec.net.userMode ? { mac: spec.net.mac, userMode: { forwards: [] } } : spec.net } : {}),
  });
  const t0 = process.hrtime.bigint();
  // Tied to this process (parent-death signal), like shoal's own VMMs.
  const stderrFile = path.join(runDir, 'qemu.log');
  const stderrFd = fs.openSync(stderrFile, 'w', 0o600);
  const qemu = spawnTied('qemu-system-x86_64', argv, { stdio: ['ignore', 'ignore', stderrFd] });
  fs.closeSync(stderrFd);
  const exited = new Promise((resolve) => qemu.once('exit', resolve));
  try {
    const qmp = await Promise.race([
      QmpClient.connect(paths.qmpSocket, 30_000),
      exited.then(() => { throw new Error(`the bare QEMU exited: ${fs.readFileSync(stderrFile, 'utf8').trim()}`); }),
    ]);
    // As shoal restores: the capability first (it changes the stream's format), then the stream.
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await qmp.execute('migrate-incoming', { uri: `exec:cat ${path.join(snapshotDir, 'state.bin')}` });
    // The snapshot was taken of a paused VM, so the restored one lands paused: start it.
    for (;;) {
      const status = ((await qmp.execute('query-status')) as { status: string }).status;
      if (status === 'paused' || status === 'running') break;
      await new Promise((r) => setTimeout(r, 2));
    }
    await qmp.execute('cont');
    const handle = { connectAgent: () => connectWithRetry(paths.agentSocket) } as unknown as VmHandle;
    const agent = await openAgentSession(handle, 60_000);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    agent.destroy();
    qmp.close();
    return ms;
  } finally {
    qemu.kill('SIGKILL');
    await exited;
    fs.rmSync(runDir, { recursive: true, force: true });
  }
}

async function connectWithRetry(socketPath: string): Promise<Duplex> {
  for (let i = 0; ; i++) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.connect(socketPath);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (err) {
      if (i > 2000) throw err;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

