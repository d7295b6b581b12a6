/**
 * `shoal serve [--socket PATH | --listen HOST:PORT] [--token-file PATH] [--image-dir DIR...]
 * [--template NAME=IMAGE...] [--domain D]`: the HTTP API over the same state directory as the
 * CLI, so each sees the other's VMs, and E2B's sandbox API at /e2b. Every request needs the token
 * (the file is created, mode 0600, when missing); E2B's SDK sends it as the key e2b_<token>.
 *
 * By default it listens on a Unix socket in a directory only its user may enter
 * (/run/shoal/api.sock as root, <state>/api.sock otherwise), not on a TCP port: any local user
 * may bind 127.0.0.1:7070 while serve is down and collect the bearer token from clients. TCP
 * only with an explicit --listen.
 */
import type { Command } from 'commander';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { parseTemplateFlags } from '../../api/e2b/template-flags';
import { loadOrCreateToken } from '../../api/token';
import { parseImage } from '../../container/image-ref';
import { StateStore } from '../../state/store';
import { ensurePrivateDir } from '../../util/private-fs';
import { ShoalError } from '../../util/errors';
import { act } from '../act';

export interface ServeFlags {
  listen?: string;
  socket?: string;
  tokenFile?: string;
  imageDir?: string[];
  template?: string[];
  domain?: string;
}

/** --domain: a DNS name (getHost's hosts are PORT-SANDBOXID.DOMAIN). */
export function parseDomain(value: string | undefined): string | null {
  if (value === undefined) return null;
  const domain = value.toLowerCase().replace(/\.$/, '');
  const label = '[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?';
  if (domain.length > 200 || !new RegExp(`^${label}(\\.${label})*$`).test(domain)) throw new ShoalError(`invalid --domain "${value}": expected a DNS name such as sandbox.example.com`);
  return domain;
}

/** --template NAME=IMAGE values, each image reference checked as `shoal run` checks it. */
export function parseTemplates(values: readonly string[] | undefined): Map<string, string> {
  try {
    return parseTemplateFlags(values ?? [], (image) => void parseImage(image));
  } catch (err) {
    throw new ShoalError((err as Error).message.split('\n')[0]!);
  }
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

/** The default socket: in a directory that is root's alone as root, else in the private state directory. */
export function defaultSocket(store: StateStore): string {
  const root = typeof process.geteuid === 'function' && process.geteuid() === 0;
  return root ? '/run/shoal/api.sock' : path.join(store.root, 'api.sock');
}

/**
 * Listens on a Unix socket created mode 0600 (umask 0177 around the bind: no moment with looser
 * bits) in a directory only this user may enter. A socket left by a dead server is replaced; a
 * live server's is not.
 */
async function listenOnSocket(app: { listen(o: { path: string }): Promise<string> }, socket: string): Promise<void> {
  ensurePrivateDir(path.dirname(socket));
  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(socket);
  } catch {
    existing = undefined;
  }
  if (existing) {
    if (!existing.isSocket()) throw new ShoalError(`--socket ${socket} exists and is not a socket`);
    const live = await new Promise<boolean>((resolve) => {
      const probe = net.connect(socket, () => { probe.destroy(); resolve(true); });
      probe.on('error', () => resolve(false));
    });
    if (live) throw new ShoalError(`${socket}: another shoal serve is listening there`);
    fs.rmSync(socket);
  }
  const old = process.umask(0o177);
  try {
    await app.listen({ path: socket });
  } finally {
    process.umask(old);
  }
}

export async function serveCommand(flags: ServeFlags): Promise<number> {
  const store = new StateStore();
  const imageDirs = parseImageDirs(flags.imageDir);
  const templates = parseTemplates(flags.template);
  const domain = parseDomain(flags.domain);
  if (flags.listen !== undefined && flags.socket !== undefined) throw new ShoalError('give --listen or --socket, not both');
  const listen = flags.listen !== undefined ? parseListen(flags.listen) : undefined;
  const tokenFile = path.resolve(flags.tokenFile ?? path.join(store.root, 'api-token'));
  // The token is what guards every route; it is always there (made when missing), so a listener
  // beyond loopback is never open without one.
  const token = loadOrCreateToken(tokenFile);
  // Loaded here, not at the top: Fastify and the API's schemas are a tenth of a second of every
  // other command's start (a clone's, an exec's) otherwise.
  const [{ ShoalCore }, { buildServer }] = await Promise.all([import('../../api/core'), import('../../api/server')]);
  const app = await buildServer(new ShoalCore(store), { token, imageDirs, e2b: { stateDir: path.join(store.root, 'e2b'), templates, domain } });
  if (listen === undefined) {
    const socket = path.resolve(flags.socket ?? defaultSocket(store));
    await listenOnSocket(app, socket);
    process.stderr.write(`shoal serve: listening on ${socket} (token in ${tokenFile})\n`);
    // Scripts and tests read where it listens from stdout.
    process.stdout.write(`${JSON.stringify({ socket, tokenFile })}\n`);
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
    .option('--socket <path>', 'the Unix socket to listen on, created mode 0600 (default /run/shoal/api.sock as root, else <state>/api.sock)')
    .option('--listen <host:port>', 'listen on TCP instead (e.g. 127.0.0.1:7070): any local user can take a free port while serve is down')
    .option('--image-dir <dir>', 'a directory whose docker-archive/oci-archive files API clients may use as images (repeatable; default none)', collect)
    .option('--template <name=image>', 'an E2B template: NAME (the SDK\'s template, e.g. base) runs IMAGE; its first sandbox boots once and is snapshotted, the others are clones (repeatable)', collect)
    .option('--domain <domain>', 'E2B getHost: requests for PORT-SANDBOXID.DOMAIN go to that sandbox\'s port')
    .option('--token-file <path>', 'the bearer token, created (mode 0600) when missing (default <state>/api-token)')
    .action(act((flags: ServeFlags) => serveCommand(flags)));
}
