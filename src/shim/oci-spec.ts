/**
 * The parts of an OCI runtime spec (the bundle's config.json, or an exec's process spec) the
 * shim honours, validated where they enter: anything malformed is one clear error, and what
 * a VM cannot do is refused by name instead of ignored.
 */
import fs from 'node:fs';
import path from 'node:path';
import { CAPABILITIES, type ContainerOptions } from '../container/container-options';
import { ShoalError } from '../util/errors';

/** config.json larger than this is refused (runc's specs are a few KiB). */
const MAX_SPEC_BYTES = 1 << 20;

export interface ProcessSpec {
  args: string[];
  env: Record<string, string>;
  cwd: string;
  /** uid:gid, what podman --user takes. */
  user: string;
  terminal: boolean;
}

export interface BundleSpec {
  process: ProcessSpec;
  hostname?: string;
  readOnly: boolean;
  annotations: Record<string, string>;
  /**
   * process.capabilities.bounding, without CAP_ (podman's spelling): the container gets exactly
   * these (podman --cap-drop ALL --cap-add ...). Absent: podman's defaults.
   */
  capabilities?: string[];
  /** process.rlimits as podman --ulimit values (NAME=SOFT:HARD). */
  ulimits: string[];
  /** tmpfs mounts as podman --tmpfs values (DEST[:OPTIONS]); the runtime's own (/dev, /dev/shm...) excepted. */
  tmpfs: string[];
  /**
   * Mounts that cannot apply in the VM (a host path bound in: CRI's /etc/hosts, volumes): one
   * line each in the log, not applied.
   */
  ignoredMounts: string[];
  /** From linux.resources, when given. */
  memoryMiB?: number;
  cpus?: number;
  /** What CRI made this container: a pod's sandbox, or an app container of a pod; absent for ctr. */
  criType?: 'sandbox' | 'container';
  /** The pod (its sandbox container's id): CRI's io.kubernetes.cri.sandbox-id. */
  sandboxId?: string;
  /** linux.namespaces' network path: the pod's namespace CNI set up (a sandbox's). */
  netnsPath?: string;
  /** shoal.dev/restore-from on a pod (a sandbox container): the snapshot tag its VM is cloned from. */
  restoreFrom?: string;
}

/** A pod annotation (through containerd's pod_annotations): start the pod's VM from this snapshot. */
export const RESTORE_FROM = 'shoal.dev/restore-from';

/** CRI's annotations (containerd 1.6, pkg/cri/annotations). */
export const CRI_CONTAINER_TYPE = 'io.kubernetes.cri.container-type';
export const CRI_SANDBOX_ID = 'io.kubernetes.cri.sandbox-id';

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.every((s) => typeof s === 'string');

export function readBundleSpec(bundle: string): BundleSpec {
  const file = path.join(bundle, 'config.json');
  let text: string;
  try {
    const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      if (fs.fstatSync(fd).size > MAX_SPEC_BYTES) throw new ShoalError(`${file} is larger than ${MAX_SPEC_BYTES} bytes`);
      text = fs.readFileSync(fd, 'utf8');
    } finally {
      fs.closeSync(fd);
    }
  } catch (err) {
    if (err instanceof ShoalError) throw err;
    throw new ShoalError(`cannot read the bundle's config.json: ${(err as Error).message}`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new ShoalError(`the bundle's config.json is not JSON: ${(err as Error).message}`);
  }
  return parseBundleSpec(value);
}

export function parseBundleSpec(value: unknown): BundleSpec {
  if (!isObject(value)) throw new ShoalError('config.json: not an object');
  const spec: BundleSpec = {
    process: parseProcessSpec(value.process, 'config.json process'),
    readOnly: isObject(value.root) && value.root.readonly === true,
    annotations: {},
    ulimits: parseRlimits(isObject(value.process) ? value.process.rlimits : undefined),
    tmpfs: [],
    ignoredMounts: [],
  };
  parseMounts(value.mounts, spec);
  if (value.hostname !== undefined) {
    if (typeof value.hostname !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$/.test(value.hostname)) throw new ShoalError('config.json: invalid hostname');
    spec.hostname = value.hostname;
  }
  if (isObject(value.annotations)) {
    for (const [k, v] of Object.entries(value.annotations)) if (typeof v === 'string') spec.annotations[k] = v;
  }
  const caps = isObject(value.process) && isObject(value.process.capabilities) ? value.process.capabilities.bounding : undefined;
  if (caps !== undefined) {
    if (!isStringArray(caps) || caps.length > 64) throw new ShoalError('config.json: process.capabilities.bounding must be a list of capability names');
    spec.capabilities = [...new Set(caps.map((cap) => {
      const name = cap.toUpperCase().replace(/^CAP_/, '');
      // A capability podman (in the guest) does not know is refused, not dropped in silence.
      if (!CAPABILITIES.includes(name)) throw new ShoalError(`config.json: unknown capability "${cap.slice(0, 40)}"`);
      return name;
    }))];
  }
  const type = spec.annotations[CRI_CONTAINER_TYPE];
  if (type !== undefined) {
    if (type !== 'sandbox' && type !== 'container') throw new ShoalError(`config.json: unknown ${CRI_CONTAINER_TYPE} "${type.slice(0, 40)}"`);
    spec.criType = type;
    const sandboxId = spec.annotations[CRI_SANDBOX_ID];
    if (sandboxId === undefined || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(sandboxId)) throw new ShoalError(`config.json: a CRI container needs a valid ${CRI_SANDBOX_ID} annotation`);
    spec.sandboxId = sandboxId;
  }
  const restoreFrom = spec.annotations[RESTORE_FROM];
  if (restoreFrom !== undefined) {
    if (spec.criType !== 'sandbox') throw new ShoalError(`config.json: ${RESTORE_FROM} is a pod annotation (for the pod's sandbox)`);
    if (!/^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/.test(restoreFrom)) throw new ShoalError(`config.json: ${RESTORE_FROM} must be a snapshot tag, not ${JSON.stringify(restoreFrom.slice(0, 40))}`);
    spec.restoreFrom = restoreFrom;
  }
  const namespaces = isObject(value.linux) && Array.isArray(value.linux.namespaces) ? value.linux.namespaces : [];
  for (const ns of namespaces) {
    if (isObject(ns) && ns.type === 'network' && typeof ns.path === 'string' && ns.path !== '') spec.netnsPath = ns.path;
  }
  const resources = isObject(value.linux) && isObject(value.linux.resources) ? value.linux.resources : undefined;
  if (resources && isObject(resources.memory) && typeof resources.memory.limit === 'number' && resources.memory.limit > 0) {
    spec.memoryMiB = Math.max(256, Math.ceil(resources.memory.limit / (1 << 20)));
  }
  if (resources && isObject(resources.cpu) && typeof resources.cpu.quota === 'number' && typeof resources.cpu.period === 'number' && resources.cpu.quota > 0 && resources.cpu.period > 0) {
    spec.cpus = Math.max(1, Math.min(8, Math.ceil(resources.cpu.quota / resources.cpu.period)));
  }
  return spec;
}

/** OCI rlimit types and podman's --ulimit names for them. */
const RLIMITS: Record<string, string> = {
  RLIMIT_AS: 'as', RLIMIT_CORE: 'core', RLIMIT_CPU: 'cpu', RLIMIT_DATA: 'data', RLIMIT_FSIZE: 'fsize', RLIMIT_LOCKS: 'locks',
  RLIMIT_MEMLOCK: 'memlock', RLIMIT_MSGQUEUE: 'msgqueue', RLIMIT_NICE: 'nice', RLIMIT_NOFILE: 'nofile', RLIMIT_NPROC: 'nproc',
  RLIMIT_RSS: 'rss', RLIMIT_RTPRIO: 'rtprio', RLIMIT_RTTIME: 'rttime', RLIMIT_SIGPENDING: 'sigpending', RLIMIT_STACK: 'stack',
};

function parseRlimits(value: unknown): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.length > 32) throw new ShoalError('config.json: process.rlimits must be a list');
  // RLIM_INFINITY is 2^64-1, beyond a JSON number's precision: anything that large is unlimited.
  const limit = (v: unknown): string => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new ShoalError('config.json: an rlimit value must be a non-negative integer');
    return v >= 2 ** 63 ? '-1' : String(v);
  };
  return value.map((entry) => {
    if (!isObject(entry) || typeof entry.type !== 'string') throw new ShoalError('config.json: an rlimit needs a type');
    const name = RLIMITS[entry.type];
    if (!name) throw new ShoalError(`config.json: unknown rlimit "${entry.type.slice(0, 40)}"`);
    return `${name}=${limit(entry.soft)}:${limit(entry.hard)}`;
  });
}

/** Where the container runtime (podman in the guest) mounts its own filesystems: the bundle's are its defaults. */
const RUNTIME_MOUNTS = new Set(['/proc', '/dev', '/dev/pts', '/dev/shm', '/dev/mqueue', '/sys', '/sys/fs/cgroup']);
/** The tmpfs options podman's --tmpfs takes. */
const TMPFS_OPTION = /^(nosuid|nodev|noexec|suid|dev|exec|ro|rw|(mode=[0-7]{3,4})|(size=[0-9]+[kmg]?))$/;
/** Access-time policies, which podman's --tmpfs refuses and which change nothing a program relies on in a tmpfs: dropped. */
const ATIME_OPTION = /^(strictatime|relatime|noatime|nodiratime)$/;

function parseMounts(value: unknown, spec: BundleSpec): void {
  if (value === undefined) return;
  if (!Array.isArray(value) || value.length > 256) throw new ShoalError('config.json: mounts must be a list');
  for (const mount of value) {
    if (!isObject(mount) || typeof mount.destination !== 'string' || !path.posix.isAbsolute(mount.destination) || /[\0\n:,]/.test(mount.destination)) {
      throw new ShoalError('config.json: a mount needs an absolute destination (without : or ,)');
    }
    const destination = path.posix.normalize(mount.destination);
    if (RUNTIME_MOUNTS.has(destination)) continue;
    const options = (isStringArray(mount.options) ? mount.options : []).filter((o) => !ATIME_OPTION.test(o));
    if (mount.type === 'tmpfs') {
      const bad = options.find((o) => !TMPFS_OPTION.test(o));
      if (bad !== undefined) throw new ShoalError(`config.json: tmpfs option "${bad.slice(0, 40)}" for ${destination} is not supported`);
      spec.tmpfs.push(options.length > 0 ? `${destination}:${options.join(',')}` : destination);
    } else {
      spec.ignoredMounts.push(`${destination} (${typeof mount.type === 'string' ? mount.type.slice(0, 20) : 'bind'} from ${typeof mount.source === 'string' ? mount.source.slice(0, 200) : '?'})`);
    }
  }
}

/** An OCI process object (config.json's, or the JSON an exec's spec Any carries). */
export function parseProcessSpec(value: unknown, where: string): ProcessSpec {
  if (!isObject(value)) throw new ShoalError(`${where}: missing`);
  if (!isStringArray(value.args) || value.args.length === 0) throw new ShoalError(`${where}: args must be a non-empty list of strings`);
  if (value.args.some((a) => a.includes('\0'))) throw new ShoalError(`${where}: an argument contains a NUL byte`);
  const env: Record<string, string> = {};
  if (value.env !== undefined) {
    if (!isStringArray(value.env)) throw new ShoalError(`${where}: env must be a list of KEY=VALUE strings`);
    for (const pair of value.env) {
      const eq = pair.indexOf('=');
      const key = eq < 0 ? pair : pair.slice(0, eq);
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new ShoalError(`${where}: invalid environment variable name "${key.slice(0, 64)}"`);
      env[key] = eq < 0 ? '' : pair.slice(eq + 1);
    }
  }
  const cwd = value.cwd === undefined ? '/' : value.cwd;
  if (typeof cwd !== 'string' || !path.posix.isAbsolute(cwd) || cwd.includes('\0')) throw new ShoalError(`${where}: cwd must be an absolute path`);
  let user = '0:0';
  if (value.user !== undefined) {
    if (!isObject(value.user)) throw new ShoalError(`${where}: user must be an object`);
    const { uid, gid } = value.user;
    const id = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < 0xffffffff;
    if (!id(uid ?? 0) || !id(gid ?? 0)) throw new ShoalError(`${where}: user uid/gid must be numeric ids`);
    user = `${(uid as number | undefined) ?? 0}:${(gid as number | undefined) ?? 0}`;
  }
  return { args: value.args, env, cwd, user, terminal: value.terminal === true };
}

/** The podman flags for a bundle's container. */
export function containerOptionsOf(spec: BundleSpec): ContainerOptions {
  const options: ContainerOptions = { user: spec.process.user, workdir: spec.process.cwd };
  if (spec.hostname !== undefined) options.hostname = spec.hostname;
  if (spec.readOnly) options.readOnly = true;
  if (spec.capabilities !== undefined) {
    options.capDrop = ['ALL'];
    options.capAdd = spec.capabilities;
  }
  if (spec.ulimits.length > 0) options.ulimits = spec.ulimits;
  if (spec.tmpfs.length > 0) options.tmpfs = spec.tmpfs;
  return options;
}
