/**
 * `shoal serve [--listen HOST:PORT] [--socket PATH] [--token-file PATH]`: the HTTP API over the
 * same state directory as the CLI, so each sees the other's VMs. Loopback by default; every
 * request needs the token (the file is created, mode 0600, when missing).
 */
import type { Command } from 'commander';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { loadOrCreateToken } from '../../api/token';
import { StateStore } from '../../state/store';
import { ShoalError } from '../../util/errors';
import { act } from '../act';

export interface ServeFlags {
  listen?: string;
  socket?: string;
  tokenFile?: string;
  imageDir?: string[];
}

/** --image-dir values: each must be an existing directory (named once, resolved at start). */
export function parseImageDirs(values: readonly string[] | undefined): string[] {
  return (values ?? []).map((value) => {
    const dir = path.resolve(value);
    let st: fs.Stats;
    try {
      st = fs.statSync(dir);
    } catch {
      throw new ShoalError(`--image-dir ${dir} does not exist`);
    }
    if (!st.isDirectory()) throw new ShoalError(`--image-dir ${dir} is not a directory`);
    return fs.realpathSync(dir);
  });
}

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export function parseListen(value: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ShoalError(`invalid --listen "${value}": expected HOST:PORT (e.g. 127.0.0.1:7070)`);
  return { host: m[1] ?? m[2]!, port };
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (net.isIPv4(host) && host.startsWith('127.'));
}

export async function serveCommand(flags: ServeFlags): Promise<number> {
  const store = new StateStore();
  const imageDirs = parseImageDirs(flags.imageDir);
  const listen = parseListen(flags.listen ?? '127.0.0.1:7070');
  const tokenFile = path.resolve(flags.tokenFile ?? path.join(store.root, 'api-token'));
  // The token is what guards every route; it is always there (made when missing), so a listener
  // beyond loopback is never open without one.
  const token = loadOrCreateToken(tokenFile);
  // Loaded here, not at the top: Fastify and the API's schemas are a tenth of a second of every
  // other command's start (a clone's, an exec's) otherwise.
  const [{ ShoalCore }, { buildServer }] = await Promise.all([import('../../api/core'), import('../../api/server')]);
  const app = await buildServer(new ShoalCore(store), { token, imageDirs });
  if (flags.socket) {
    const socket = path.resolve(flags.socket);
    if (fs.existsSync(socket)) {
      if (!fs.lstatSync(socket).isSocket()) throw new ShoalError(`--socket ${socket} exists and is not a socket`);
      fs.rmSync(socket);
    }
    await app.listen({ path: socket });
    fs.chmodSync(socket, 0o600);
    process.stderr.write(`shoal serve: listening on ${socket} (token in ${tokenFile})\n`);
  } else {
    if (!isLoopback(listen.host)) process.stderr.write(`shoal serve: listening beyond loopback on ${listen.host}; every request needs the token\n`);
    const address = await app.listen({ host: listen.host, port: listen.port });
    process.stderr.write(`shoal serve: listening on ${address} (token in ${tokenFile})\n`);
    // Scripts and tests read the address from stdout (with --listen HOST:0 the port is chosen here).
    process.stdout.write(`${JSON.stringify({ url: address, tokenFile })}\n`);
  }
  await new Promise<void>((resolve) => {
    const stop = (): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      void app.close().finally(resolve);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  return 0;
}

/** The command's flags, declared beside its handler. */
export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('serve the HTTP API (sandboxes, processes, files, snapshots, fork) over the same VMs as the CLI')
    .option('--listen <host:port>', 'address to listen on (default 127.0.0.1:7070)')
    .option('--socket <path>', 'listen on this Unix socket (mode 0600) instead')
    .option('--image-dir <dir>', 'a directory whose docker-archive/oci-archive files API clients may use as images (repeatable; default none)', collect)
    .option('--token-file <path>', 'the bearer token, created (mode 0600) when missing (default <state>/api-token)')
    .action(act((flags: ServeFlags) => serveCommand(flags)));
}
