/**
 * `shoal snapshot serve TAG [--socket PATH] [--json]`: a memory server for Firecracker's Uffd
 * backend. It maps the snapshot's memory file once and answers every clone's page faults from
 * it (src/snapshot/uffd-server.ts, one native thread per clone), so all clones share those
 * pages. It runs in the foreground until SIGINT/SIGTERM, survives its clones' deaths, and
 * registers itself under <state>/serve/<pid>.json so `snapshot run --pid PID` can find it.
 */
import type { Command } from 'commander';
import { act } from '../act';
import fs from 'node:fs';
import path from 'node:path';
import { readJson, writeJsonAtomic } from '../../state/atomic';
import { StateStore } from '../../state/store';
import { UffdServer } from '../../snapshot/uffd-server';
import { findSnapshot, snapshotFiles } from '../../snapshot/store';
import { ShoalError } from '../../util/errors';
import { isAlive, processStartTime } from '../../util/process';
import { progressLine } from '../output';

export interface ServeRegistration {
  pid: number;
  startTime?: string;
  tag: string;
  /** The Unix socket Firecracker's Uffd backend connects to (mem_backend.backend_path). */
  socket: string;
}

function serveDir(store: StateStore): string {
  return path.join(store.root, 'serve');
}

export async function snapshotServeCommand(tag: string, flags: { socket?: string; json?: boolean }): Promise<number> {
  const store = new StateStore();
  const { dir } = findSnapshot(store, tag);
  const registryDir = serveDir(store);
  store.ensureDir('serve');
  const socket = path.resolve(flags.socket ?? path.join(registryDir, `${process.pid}.sock`));
  const registration: ServeRegistration = { pid: process.pid, tag, socket };
  const startTime = processStartTime(process.pid);
  if (startTime !== undefined) registration.startTime = startTime;
  const registryFile = path.join(registryDir, `${process.pid}.json`);

  let server: UffdServer;
  try {
    server = UffdServer.listen({ socketPath: socket, memFile: snapshotFiles(dir).memory });
  } catch (err) {
    throw new ShoalError(`cannot serve snapshot ${tag} on ${socket}: ${(err as Error).message}`);
  }
  writeJsonAtomic(registryFile, registration);
  server.on('clientExit', (client, stats) => progressLine(`clone pid ${client.pid} gone after ${JSON.stringify(stats)}`));
  if (flags.json) process.stdout.write(`${JSON.stringify(registration)}\n`);
  else process.stdout.write(`serving snapshot ${tag} on ${socket} (pid ${process.pid}); Ctrl-C stops\n`);

  await new Promise<void>((resolve) => {
    const stop = (): void => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    process.once('SIGHUP', stop);
  });
  await server.close();
  fs.rmSync(registryFile, { force: true });
  return 0;
}

/** The live server registered as `pid`, for `snapshot run --pid`. */
export function findServer(store: StateStore, pid: number): ServeRegistration {
  const registration = readJson<ServeRegistration>(path.join(serveDir(store), `${pid}.json`));
  if (!registration || !isAlive(registration.pid, registration.startTime)) throw new ShoalError(`no \`shoal snapshot serve\` runs as pid ${pid}`);
  return registration;
}

/** The command's flags, declared beside its handler. */
export function registerSnapshotServe(snapshot: Command): void {
  snapshot
    .command('serve')
    .description('serve a snapshot\'s memory to Firecracker clones (Uffd backend) until interrupted')
    .argument('<tag>', 'the snapshot')
    .option('--socket <path>', 'the Unix socket to listen on (default <state>/serve/<pid>.sock)')
    .option('--json', 'print {pid, tag, socket} as JSON')
    .action(act((tag: string, flags: { socket?: string; json?: boolean }) => snapshotServeCommand(tag, flags)));
}
