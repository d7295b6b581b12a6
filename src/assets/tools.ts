/**
 * Host tools the guest-asset build needs, and a small process runner.
 */
import { spawn, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import { ShoalError } from '../util/errors';
import { searchPath } from '../util/which';

/** Host tool -> the Debian package that provides it. */
export const HOST_TOOLS: Readonly<Record<string, string>> = {
  'qemu-system-x86_64': 'qemu-system-x86',
  mmdebstrap: 'mmdebstrap',
  'mkfs.ext4': 'e2fsprogs',
  busybox: 'busybox-static',
  cpio: 'cpio',
  depmod: 'kmod',
  setpriv: 'util-linux',
  'apt-get': 'apt',
  'apt-cache': 'apt',
  'dpkg-deb': 'dpkg',
};

const EXTRA_PATH = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

/** Absolute path of an executable on PATH (plus the sbin dirs), or null. */
export function which(tool: string): string | null {
  return searchPath(tool, process.env.PATH, EXTRA_PATH);
}

export interface MissingTool {
  tool: string;
  /** Debian package to apt-get install. */
  pkg: string;
}

/** The tools (of `tools`, default all of HOST_TOOLS) that are not installed. */
export function missingTools(tools: readonly string[] = Object.keys(HOST_TOOLS)): MissingTool[] {
  const out: MissingTool[] = [];
  for (const tool of tools) {
    if (tool === 'busybox') {
      if (!busyboxPath()) out.push({ tool, pkg: HOST_TOOLS[tool] ?? tool });
      continue;
    }
    if (!which(tool)) out.push({ tool, pkg: HOST_TOOLS[tool] ?? tool });
  }
  return out;
}

/** Throws a one-line ShoalError naming the packages to install when any tool is missing. */
export function requireTools(tools: readonly string[]): void {
  const missing = missingTools(tools);
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map((m) => m.pkg))];
  throw new ShoalError(
    `missing host tool${missing.length > 1 ? 's' : ''} ${missing.map((m) => m.tool).join(', ')}: run \`apt-get install ${pkgs.join(' ')}\``,
  );
}

/** The host's statically linked busybox (the initramfs runs it with no libc). */
export function busyboxPath(): string | null {
  for (const p of ['/bin/busybox', '/usr/bin/busybox']) {
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

/**
 * Runs a command to completion; rejects with a ShoalError carrying the tail of
 * stderr when it exits non-zero. `input` is written to stdin.
 */
export function run(
  cmd: string,
  args: readonly string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; input?: string | Buffer; timeoutMs?: number } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const so: SpawnOptions = { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] };
    const child = spawn(cmd, args, so);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timer: NodeJS.Timeout | undefined;
    if (opts.timeoutMs) {
      timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    }
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      reject(new ShoalError(`cannot run ${cmd}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0) return resolve({ stdout, stderr });
      const tail = stderr.trim().split('\n').slice(-5).join(' | ');
      reject(new ShoalError(`${cmd} ${args.slice(0, 3).join(' ')}... failed (${signal ?? `exit ${code}`}): ${tail}`));
    });
    child.stdin?.on('error', () => undefined);
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}
