/**
 * `shoal exec` into the container without podman: `crun exec` on the container, with the
 * process (user, env, working directory, capabilities, rlimits, no-new-privileges, AppArmor
 * and SELinux labels) that podman gave the container's own process, the request's env laid
 * over its env, as `podman exec` does. podman exec costs seconds under TCG (podman, then conmon,
 * then crun); crun alone is one process start.
 *
 * Where the container cannot be resolved (not created yet, not running, storage not as
 * expected), the caller falls back to the request's own argv (`podman exec`), which gives the
 * error podman would give.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ContainerExecTarget } from '../protocol/messages';

/** Where podman (as root) keeps its containers, and where crun keeps their state. */
export interface ContainerPaths {
  storage: string;
  crunRoot: string;
  /** Process files for crun (mode 0600 in a 0700 directory), removed once crun has read them. */
  work: string;
  /** Where a process's root shows (tests point it at a directory). */
  procRoot?: (pid: number) => string;
}

export const DEFAULT_PATHS: ContainerPaths = {
  storage: '/var/lib/containers/storage/overlay-containers',
  crunRoot: '/run/crun',
  work: '/run/shoal/exec',
};

/** Bounds on what is read from podman's files: a hostile container can write in the guest. */
const MAX_CONTAINERS_JSON = 4 << 20;
const MAX_CONFIG_JSON = 4 << 20;
const CONTAINER_ID = /^[0-9a-f]{64}$/;

interface OciProcess {
  terminal?: boolean;
  user?: unknown;
  args?: string[];
  env?: string[];
  cwd?: string;
  capabilities?: unknown;
  rlimits?: unknown;
  noNewPrivileges?: boolean;
  apparmorProfile?: string;
  selinuxLabel?: string;
  oomScoreAdj?: number;
}

interface Resolved {
  id: string;
  process: OciProcess;
  /** The container's root as the guest sees it (/proc/<init pid>/root). */
  root: string;
}

/** The container's process template, by container id (a container's config.json never changes). */
const templates = new Map<string, OciProcess>();

export interface DirectExec {
  argv: string[];
  /** The file crun writes the container process's pid to (signals go to that process). */
  pidFile: string;
  /** Removes the process and pid files. */
  cleanup(): void;
}

/**
 * The `crun exec` command line for a request, or undefined when the container cannot be entered
 * directly (then podman must do it).
 */
export function directContainerExec(target: ContainerExecTarget, tty: boolean, paths: ContainerPaths = DEFAULT_PATHS): DirectExec | undefined {
  if (!Array.isArray(target.argv) || target.argv.length === 0 || !target.argv.every((a) => typeof a === 'string')) return undefined;
  const resolved = resolve(target.name, paths);
  if (!resolved) return undefined;
  let env = mergeEnv(resolved.process.env ?? [], target.env ?? {}, tty);
  if (!env || !commandRuns(resolved.root, target.argv[0]!, env)) return undefined;
  const process: OciProcess = { ...resolved.process, args: target.argv, env, terminal: false };
  if (target.workdir !== undefined) {
    // A directory that is not there: podman says so in its words (and exit code).
    if (typeof target.workdir !== 'string' || !target.workdir.startsWith('/') || !isDirectory(resolved.root, target.workdir)) return undefined;
    process.cwd = target.workdir;
  }
  if (target.user !== undefined) {
    const user = resolveUser(resolved.root, target.user);
    if (!user) return undefined;
    process.user = { uid: user.uid, gid: user.gid, additionalGids: user.additionalGids };
    process.capabilities = capabilitiesFor(resolved.process.capabilities, user.uid);
    // podman exec --user: HOME is the user's unless the exec's env sets it.
    if (!Object.prototype.hasOwnProperty.call(target.env ?? {}, 'HOME')) env = [...env.filter((e) => !e.startsWith('HOME=')), `HOME=${user.home}`];
    process.env = env;
  }
  fs.mkdirSync(paths.work, { recursive: true, mode: 0o700 });
  const base = path.join(paths.work, crypto.randomBytes(8).toString('hex'));
  const processFile = `${base}.json`;
  const pidFile = `${base}.pid`;
  fs.writeFileSync(processFile, JSON.stringify(process), { mode: 0o600, flag: 'wx' });
  const cleanup = (): void => {
    for (const f of [processFile, pidFile]) fs.rmSync(f, { force: true });
  };
  // terminal stays false: under -t the agent already runs crun on a pseudo-terminal, which the
  // container process inherits as its stdio and controlling terminal, so its size and resizes
  // are the agent's (a second terminal inside would need a console socket and a copy loop).
  return { argv: ['crun', '--root', paths.crunRoot, 'exec', '--process', processFile, '--pid-file', pidFile, resolved.id], pidFile, cleanup };
}

/** directContainerExec, or undefined on any failure (e.g. /run/shoal/exec not writable): podman still can. */
export function enterContainer(target: ContainerExecTarget, tty: boolean): DirectExec | undefined {
  try {
    return directContainerExec(target, tty);
  } catch {
    return undefined;
  }
}

/** The running container called name: its id from podman's containers.json, its process from its config.json. */
function resolve(name: string, paths: ContainerPaths): Resolved | undefined {
  if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(name)) return undefined;
  const containers = readJson(path.join(paths.storage, 'containers.json'), MAX_CONTAINERS_JSON);
  if (!Array.isArray(containers)) return undefined;
  const entry = containers.find((c: unknown) => typeof c === 'object' && c !== null
    && Array.isArray((c as { names?: unknown }).names) && (c as { names: unknown[] }).names.includes(name)) as { id?: unknown } | undefined;
  const id = entry?.id;
  if (typeof id !== 'string' || !CONTAINER_ID.test(id)) return undefined;
  const pid = runningPid(id, paths);
  if (pid === undefined) return undefined;
  let process = templates.get(id);
  if (!process) {
    const config = readJson(path.join(paths.storage, id, 'userdata', 'config.json'), MAX_CONFIG_JSON) as { process?: OciProcess } | undefined;
    if (!config || typeof config.process !== 'object' || config.process === null) return undefined;
    process = config.process;
    templates.set(id, process);
  }
  return { id, process, root: paths.procRoot?.(pid) ?? `/proc/${pid}/root` };
}

/** The container's live init process from crun's state (else podman reports the state). */
function runningPid(id: string, paths: ContainerPaths): number | undefined {
  const status = readJson(path.join(paths.crunRoot, id, 'status'), 1 << 16) as { pid?: unknown } | undefined;
  const pid = status?.pid;
  if (typeof pid !== 'number' || !Number.isInteger(pid) || pid <= 0) return undefined;
  try {
    // A zombie's state is Z; stopped (T) still counts as existing, as for podman.
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return /^\d+ \(.*\) Z /s.test(stat) ? undefined : pid;
  } catch {
    return undefined;
  }
}

/**
 * Whether command names an executable regular file in the container (searched in the process's
 * PATH when it has no slash), resolving symlinks against the container's root. When it does not,
 * podman runs the exec: it turns the runtime's failure into its exit codes (127 not found, 126
 * cannot run) and messages, which crun alone does not.
 */
export function commandRuns(root: string, command: string, env: string[]): boolean {
  if (command.length === 0 || command.includes('\0')) return false;
  if (command.includes('/')) return isExecutable(root, command.startsWith('/') ? command : `/${command}`);
  const pathVar = env.find((e) => e.startsWith('PATH='))?.slice(5) ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
  return pathVar.split(':').filter((d) => d.startsWith('/')).some((dir) => isExecutable(root, `${dir}/${command}`));
}

function isDirectory(root: string, dir: string): boolean {
  const real = resolveInRoot(root, dir);
  if (real === undefined) return false;
  try {
    return fs.statSync(path.join(root, real)).isDirectory();
  } catch {
    return false;
  }
}

export interface ExecUser {
  uid: number;
  gid: number;
  additionalGids: number[];
  home: string;
}

const ID_PART = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$/;
const MAX_ID = 0xfffffffe;
/** /etc/passwd and /etc/group are the container's: bounded, as anything it can write. */
const MAX_USER_DB = 1 << 20;

/**
 * USER[:GROUP] as podman exec resolves it in the container: a name through its /etc/passwd
 * (unknown: undefined, and podman gives the error), a number as is (its passwd entry, if any,
 * gives the primary group and home; else group 0 and home /); GROUP a name in /etc/group or a
 * number; the supplementary groups are those of /etc/group that list the user's name.
 */
export function resolveUser(root: string, spec: string): ExecUser | undefined {
  if (typeof spec !== 'string') return undefined;
  const parts = spec.split(':');
  if (parts.length > 2 || parts.some((p) => !ID_PART.test(p))) return undefined;
  const [userPart, groupPart] = parts as [string, string | undefined];
  const passwd = readUserDb(root, '/etc/passwd').map((l) => l.split(':')).filter((f) => f.length >= 7);
  const groups = readUserDb(root, '/etc/group').map((l) => l.split(':')).filter((f) => f.length >= 4);
  const numeric = (v: string): number | undefined => (/^\d+$/.test(v) && Number(v) <= MAX_ID ? Number(v) : undefined);
  let uid = numeric(userPart);
  const entry = uid === undefined ? passwd.find((f) => f[0] === userPart) : passwd.find((f) => numeric(f[2]!) === uid);
  if (uid === undefined) {
    if (!entry) return undefined;
    uid = numeric(entry[2]!);
    if (uid === undefined) return undefined;
  }
  let gid = entry ? numeric(entry[3]!) ?? 0 : 0;
  if (groupPart !== undefined) {
    const g = numeric(groupPart) ?? (() => {
      const group = groups.find((f) => f[0] === groupPart);
      return group ? numeric(group[2]!) : undefined;
    })();
    if (g === undefined) return undefined;
    gid = g;
  }
  const name = entry?.[0];
  const additionalGids = name === undefined ? [] : groups
    .filter((f) => f[3]!.split(',').includes(name))
    .map((f) => numeric(f[2]!))
    .filter((g): g is number => g !== undefined && g !== gid);
  return { uid, gid, additionalGids: [...new Set(additionalGids)], home: entry?.[5] || '/' };
}

function readUserDb(root: string, file: string): string[] {
  const real = resolveInRoot(root, file);
  if (real === undefined) return [];
  let fd: number | undefined;
  try {
    fd = fs.openSync(path.join(root, real), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    const buf = Buffer.alloc(MAX_USER_DB);
    const n = fs.readSync(fd, buf, 0, MAX_USER_DB, 0);
    return buf.subarray(0, n).toString('utf8').split('\n').filter((l) => l !== '' && !l.startsWith('#'));
  } catch {
    return [];
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/**
 * The capabilities of an exec as another user, as podman gives them: root has the container's
 * bounding set effective and permitted; anyone else none of them (the bounding set stays).
 */
function capabilitiesFor(template: unknown, uid: number): unknown {
  if (typeof template !== 'object' || template === null) return template;
  const bounding = (template as { bounding?: unknown }).bounding;
  const set = Array.isArray(bounding) ? bounding : [];
  return uid === 0
    ? { ...template, effective: set, permitted: set }
    : { ...template, effective: [], permitted: [], inheritable: [], ambient: [] };
}

function isExecutable(root: string, file: string): boolean {
  const real = resolveInRoot(root, file);
  if (real === undefined) return false;
  try {
    const st = fs.statSync(path.join(root, real));
    return st.isFile() && (st.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

/** file (absolute, inside the container) with every symlink resolved inside root; undefined if missing or looping. */
function resolveInRoot(root: string, file: string): string | undefined {
  let pending = file.split('/').filter((c) => c !== '' && c !== '.');
  const done: string[] = [];
  for (let hops = 0; pending.length > 0;) {
    const name = pending.shift()!;
    if (name === '..') {
      done.pop();
      continue;
    }
    const at = path.join(root, ...done, name);
    let st: fs.Stats;
    try {
      st = fs.lstatSync(at);
    } catch {
      return undefined;
    }
    if (!st.isSymbolicLink()) {
      done.push(name);
      continue;
    }
    if (++hops > 40) return undefined;
    const target = fs.readlinkSync(at);
    if (target.startsWith('/')) done.length = 0;
    pending = [...target.split('/').filter((c) => c !== '' && c !== '.'), ...pending];
  }
  return `/${done.join('/')}`;
}

/**
 * The container's env with the request's laid over it, as podman exec builds it: TERM=xterm under
 * -t, and no HOSTNAME (the shell sets it from the UTS name).
 */
export function mergeEnv(base: unknown[], extra: Record<string, unknown>, tty: boolean): string[] | undefined {
  const env = new Map<string, string>();
  for (const entry of base) {
    if (typeof entry !== 'string') return undefined;
    const eq = entry.indexOf('=');
    // podman puts HOSTNAME in the container's own env but not in an exec's.
    if (eq > 0 && entry.slice(0, eq) !== 'HOSTNAME') env.set(entry.slice(0, eq), entry.slice(eq + 1));
  }
  if (tty && !env.has('TERM')) env.set('TERM', 'xterm');
  for (const [key, value] of Object.entries(extra)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key) || typeof value !== 'string') return undefined;
    env.set(key, value);
  }
  return [...env].map(([k, v]) => `${k}=${v}`);
}

/** The container process crun started (from its pid file), if it wrote one yet. */
export function execPid(pidFile: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(pidFile, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** SIGKILL for the container process of a direct exec whose host went away (crun passes no signal on). */
export function killExecProcess(direct: DirectExec | undefined): void {
  const pid = direct ? execPid(direct.pidFile) : undefined;
  if (pid === undefined) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

function readJson(file: string, limit: number): unknown {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    const size = fs.fstatSync(fd).size;
    if (size > limit) return undefined;
    const buf = Buffer.alloc(size);
    const n = fs.readSync(fd, buf, 0, size, 0);
    return JSON.parse(buf.subarray(0, n).toString('utf8'));
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}
