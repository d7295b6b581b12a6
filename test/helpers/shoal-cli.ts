/**
 * Driving the real `shoal` CLI from tests: a private state directory per suite (the guest assets
 * come from the shared cache that `shoal setup` filled), a hard timeout on every command, and a
 * leak check that nothing of the suite's VMs is left behind.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { VmListing } from '../../src/cli/commands/ls';
import { cacheDir } from '../../src/util/paths';

export const SHOAL_BIN = path.resolve(__dirname, '..', '..', '..', 'bin', 'shoal');

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: Buffer;
}

export class ShoalSandbox {
  readonly stateDir: string;

  /**
   * `user`: run the CLI as this unprivileged user (the state directory becomes theirs).
   * `prefix`: argv that runs the CLI (e.g. in a mount namespace of the test's); it execs its arguments.
   */
  constructor(label: string, private readonly options: { user?: { uid: number; gid: number }; prefix?: string[] } = {}) {
    // Short path: the VM's Unix sockets live under it.
    this.stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `sh-${label}-`));
    if (options.user) fs.chownSync(this.stateDir, options.user.uid, options.user.gid);
  }

  env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    // These suites exercise the QEMU backend (snapshots and networking are QEMU's so far), also
    // on hosts where `--vmm auto` would pick Firecracker; test/e2e/firecracker.test.ts runs the
    // CLI suites again with SHOAL_E2E_VMM=firecracker where Firecracker and KVM work.
    return { ...process.env, SHOAL_STATE_DIR: this.stateDir, SHOAL_VMM: process.env.SHOAL_E2E_VMM ?? 'qemu', ...extra };
  }

  /** Runs shoal with a hard timeout (SIGKILL on expiry, reported as signal). */
  run(args: string[], options: { input?: Buffer | string; timeoutMs?: number; env?: Record<string, string> } = {}): Promise<CliResult> {
    return this.start(args, options).result;
  }

  /**
   * Starts shoal and returns at once: its pid (to kill it at a chosen moment) and its result,
   * under the same hard timeout as run().
   */
  start(args: string[], options: { input?: Buffer | string; timeoutMs?: number; env?: Record<string, string> } = {}): { pid: number; result: Promise<CliResult> } {
    let pid = -1;
    const result = new Promise<CliResult>((resolve) => {
      const user = this.options.user;
      const argv = [...(this.options.prefix ?? []), ...(user ? ['setpriv', `--reuid=${user.uid}`, `--regid=${user.gid}`, '--clear-groups'] : []), SHOAL_BIN, ...args];
      // As another user, the guest assets are still this user's (their cache would be empty).
      const env = user ? this.env({ SHOAL_CACHE_DIR: cacheDir(), HOME: this.stateDir, ...options.env }) : this.env(options.env);
      const child = spawn(argv[0]!, argv.slice(1), { env, stdio: ['pipe', 'pipe', 'pipe'] });
      pid = child.pid ?? -1;
      const stdout: Buffer[] = [];
      const stderr: Buffer[] = [];
      child.stdout.on('data', (d: Buffer) => stdout.push(d));
      child.stderr.on('data', (d: Buffer) => stderr.push(d));
      child.stdin.on('error', () => undefined);
      if (options.input !== undefined) child.stdin.end(options.input);
      else child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 180_000);
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, stdout: Buffer.concat(stdout), stderr: Buffer.concat(stderr) });
      });
    });
    return { pid, result };
  }

  /** One VM as `ls --json` lists it, or undefined. */
  async vm(name: string): Promise<LsEntry | undefined> {
    return (await this.json<LsEntry[]>(['ls', '--json'])).find((v) => v.name === name);
  }

  async json<T>(args: string[]): Promise<T> {
    const result = await this.run(args, { timeoutMs: 30_000 });
    if (result.code !== 0) throw new Error(`shoal ${args.join(' ')} failed: ${result.stderr.toString()}`);
    return JSON.parse(result.stdout.toString()) as T;
  }

  /** Pids of processes whose command line mentions this sandbox (supervisors, VMMs). */
  processes(): number[] {
    const pids: number[] = [];
    for (const entry of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      try {
        const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8');
        if (cmdline.includes(this.stateDir)) pids.push(Number(entry));
      } catch {
        // gone
      }
    }
    return pids;
  }

  /**
   * Files left in the state directory, relative, excluding the empty skeleton and the image
   * cache (which outlives VMs by design; the image-cache tests look at it directly).
   */
  leftovers(): string[] {
    const found: string[] = [];
    const walk = (dir: string): void => {
      for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) walk(full);
        else found.push(path.relative(this.stateDir, full));
      }
    };
    walk(this.stateDir);
    return found.filter((file) => !file.startsWith('image-cache/'));
  }

  /** Removes every VM of the sandbox and the sandbox itself; kills stragglers. */
  cleanup(): void {
    spawnSync(SHOAL_BIN, ['rm', '-f', ...this.vmNames()], { env: this.env(), timeout: 60_000 });
    for (const pid of this.processes()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    fs.rmSync(this.stateDir, { recursive: true, force: true });
  }

  vmNames(): string[] {
    try {
      return fs.readdirSync(path.join(this.stateDir, 'names'));
    } catch {
      return [];
    }
  }
}

export type LsEntry = VmListing;

export async function waitUntil(what: string, timeoutMs: number, check: () => boolean | Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
