/**
 * Starting and watching helper processes.
 */
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';

/**
 * Spawns a command that must never outlive this process: `setpriv --pdeathsig KILL` sets the
 * parent-death signal (prctl PR_SET_PDEATHSIG) and then execs the command, so if the
 * supervisor is killed -9 the kernel kills the VMM too. Node cannot set it itself.
 */
export function spawnTied(command: string, args: string[], options: SpawnOptions = {}, tie: { namespacesOf?: number; netnsPath?: string } = {}): ChildProcess {
  const tied = tiedArgv(command, args);
  // nsenter joins the namespaces and execs setpriv in place, so the child's pid is still the
  // command's, and the death signal is set after the namespace change rather than before it.
  const enter = tie.namespacesOf !== undefined ? enterNamespacesArgv(tie.namespacesOf) : tie.netnsPath !== undefined ? enterNetnsArgv(tie.netnsPath) : [];
  const argv = [...enter, ...tied];
  return spawn(argv[0]!, argv.slice(1), options);
}

/** The argv that runs a command under a parent-death signal (see spawnTied). */
export function tiedArgv(command: string, args: string[]): string[] {
  return ['setpriv', '--pdeathsig', 'KILL', '--', command, ...args];
}

/** argv prefix that runs a command in the user and network namespaces of `pid`, keeping its uid. */
export function enterNamespacesArgv(pid: number): string[] {
  return ['nsenter', `--target=${pid}`, '--user', '--net', '--preserve-credentials', '--'];
}

/** argv prefix that runs a command in the network namespace bound at `netnsPath` (root). */
export function enterNetnsArgv(netnsPath: string): string[] {
  return ['nsenter', `--net=${netnsPath}`, '--'];
}

/** Is a process with this pid alive and, if given, did it start at this time (guards pid reuse)? */
export function isAlive(pid: number, startTime?: string): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // A zombie still has its pid but is not running anything: a killed process whose parent has
  // not reaped it yet must count as dead, or what it left is never swept.
  if (processState(pid) === 'Z') return false;
  if (startTime === undefined) return true;
  const now = processStartTime(pid);
  return now !== undefined && now === startTime;
}

function statFields(pid: number): string[] | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Field 22 of /proc/<pid>/stat: start time in clock ticks since boot. */
export function processStartTime(pid: number): string | undefined {
  return statFields(pid)?.[19];
}

function processState(pid: number): string | undefined {
  return statFields(pid)?.[0];
}

/** Finds an executable on PATH. */
export function which(command: string): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':')) {
    const candidate = `${dir}/${command}`;
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      return candidate;
    } catch {
      // keep looking
    }
  }
  return undefined;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls until check() returns a value (not undefined), or throws after timeoutMs. */
export async function waitFor<T>(what: string, timeoutMs: number, check: () => T | undefined | Promise<T | undefined>, intervalMs = 25): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}
