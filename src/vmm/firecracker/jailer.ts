/**
 * Firecracker's jailer (docs/jailer.md): argv builder and the chroot layout.
 *
 * The jailer creates `<chroot_base>/<exec_file_name>/<id>/root` (the jail), where both
 * the chroot base and the exec file are canonicalized first (v1.16.1 src/jailer/src/env.rs,
 * Env::new and validate_exec_file): the base must be an existing directory and
 * exec_file_name is the file name of the resolved binary, not of a symlink to it. The
 * caller resolves both (launch.ts) so that the layout computed here is the jailer's.
 * copies the Firecracker binary in, sets up cgroups, pivots into the jail,
 * drops to uid:gid and execs `<exec_file_name> --id=<id> ...` plus whatever
 * follows `--`. Every file handed to Firecracker through the API (kernel,
 * initrd, drives, snapshot files, log/metrics files) must be hard-linked
 * (or copied) into the jail and named by its path *inside* the jail.
 *
 * Pure: no I/O here. The backend performs the links this module plans.
 */
import path from 'node:path';
import { ShoalError } from '../../util/errors';

export const DEFAULT_CHROOT_BASE = '/srv/jailer';

export interface JailerOptions {
  /** Path of the `jailer` binary. */
  jailerBinary: string;
  /** Canonical path of the Firecracker binary to exec (symlinks resolved: it names the jail). */
  firecrackerBinary: string;
  /** VM id: letters, digits and hyphens, at most 64 characters. */
  id: string;
  uid: number;
  gid: number;
  /** Canonical path of an existing directory; default /srv/jailer. */
  chrootBaseDir?: string;
  /** Default 2 (shoal targets cgroup v2 hosts). */
  cgroupVersion?: 1 | 2;
  /** Relative path of the parent cgroup (default: the exec file name). */
  parentCgroup?: string;
  /** `<cgroup_file>=<value>` settings, e.g. { 'cpuset.cpus': '0-1' }. */
  cgroups?: Record<string, string>;
  /** Path of a network namespace handle to join (e.g. /var/run/netns/x). */
  netns?: string;
  /** e.g. { 'no-file': 1024, fsize: 250000000 }. */
  resourceLimits?: Partial<Record<'fsize' | 'no-file', number>>;
  /** Extra Firecracker arguments (after `--`); the API socket argument is added by jailerArgv. */
  firecrackerArgs?: string[];
}

/** Name of the API socket inside the jail (passed as `--api-sock /fc.sock`). */
export const JAIL_API_SOCKET = '/fc.sock';
/** Name of the vsock UDS inside the jail. */
export const JAIL_VSOCK = '/vsock.sock';

const ID_RE = /^[A-Za-z0-9-]{1,64}$/;

export function validateJailerOptions(o: JailerOptions): void {
  if (!ID_RE.test(o.id)) throw new ShoalError(`jailer id ${JSON.stringify(o.id)} must be 1-64 letters, digits or hyphens`);
  if (!path.isAbsolute(o.firecrackerBinary)) throw new ShoalError(`--exec-file must be an absolute path, not ${o.firecrackerBinary}`);
  for (const [k, v] of [['uid', o.uid], ['gid', o.gid]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new ShoalError(`jailer ${k} must be a non-negative integer, not ${v}`);
  }
  if (o.parentCgroup !== undefined && (path.isAbsolute(o.parentCgroup) || o.parentCgroup.split('/').includes('..'))) {
    throw new ShoalError(`--parent-cgroup must be a relative path inside the hierarchy, not ${o.parentCgroup}`);
  }
}

/** The full argv (argv[0] is the jailer binary). */
export function jailerArgv(o: JailerOptions): string[] {
  validateJailerOptions(o);
  const argv = [
    o.jailerBinary,
    '--id', o.id,
    '--exec-file', o.firecrackerBinary,
    '--uid', String(o.uid),
    '--gid', String(o.gid),
    '--chroot-base-dir', o.chrootBaseDir ?? DEFAULT_CHROOT_BASE,
    '--cgroup-version', String(o.cgroupVersion ?? 2),
  ];
  if (o.parentCgroup) argv.push('--parent-cgroup', o.parentCgroup);
  for (const [file, value] of Object.entries(o.cgroups ?? {})) argv.push('--cgroup', `${file}=${value}`);
  if (o.netns) argv.push('--netns', o.netns);
  for (const [res, value] of Object.entries(o.resourceLimits ?? {})) argv.push('--resource-limit', `${res}=${value}`);
  // Never --new-pid-ns: with it the jailer clones Firecracker into the new namespace and exits 0
  // at once (env.rs exec_into_new_pid_ns), so shoal's child would not be the VMM. Nor --daemonize.
  // The jailer itself passes --id to Firecracker; shoal adds the socket location.
  argv.push('--', '--api-sock', JAIL_API_SOCKET, ...(o.firecrackerArgs ?? []));
  return argv;
}

export interface JailLayout {
  /** `<chroot_base>/<exec_file_name>/<id>` (remove it to clean up). */
  jailDir: string;
  /** `<jailDir>/root`: "/" as the jailed Firecracker sees it. */
  root: string;
  /** Host path of the API socket. */
  apiSocket: string;
  /** Host path of the vsock UDS (what connectAgent dials). */
  vsockHost: string;
  /** The vsock UDS as Firecracker names it (PUT /vsock uds_path). */
  vsockInJail: string;
  /** Where the jailer writes Firecracker's pid (save_exec_file_pid: `/<exec_file_name>.pid` in the jail). */
  pidFile: string;
}

export function jailLayout(o: Pick<JailerOptions, 'chrootBaseDir' | 'firecrackerBinary' | 'id'>): JailLayout {
  const execName = path.basename(o.firecrackerBinary);
  const jailDir = path.join(o.chrootBaseDir ?? DEFAULT_CHROOT_BASE, execName, o.id);
  const root = path.join(jailDir, 'root');
  return {
    jailDir,
    root,
    apiSocket: path.join(root, JAIL_API_SOCKET),
    vsockHost: path.join(root, JAIL_VSOCK),
    vsockInJail: JAIL_VSOCK,
    pidFile: path.join(root, `${execName}.pid`),
  };
}

/** One file to hard-link (or copy) into the jail. */
export interface JailLink {
  /** Host path of the resource. */
  from: string;
  /** Host path inside the jail root. */
  to: string;
  /** The same file as the jailed Firecracker names it. */
  inJail: string;
}

/**
 * Plans the in-jail name of each host file: `/<role>-<basename>` directly in
 * the jail root (roles keep two drives with the same basename apart).
 */
export class JailPlanner {
  readonly links: JailLink[] = [];
  private readonly byHost = new Map<string, JailLink>();

  constructor(readonly layout: JailLayout) {}

  /** Returns the path Firecracker must be given for hostPath, recording the link. */
  place(hostPath: string, role: string): string {
    const existing = this.byHost.get(hostPath);
    if (existing) return existing.inJail;
    if (!/^[a-z0-9-]+$/.test(role)) throw new ShoalError(`invalid jail role ${role}`);
    const inJail = `/${role}-${path.basename(hostPath)}`;
    const link: JailLink = { from: hostPath, to: path.join(this.layout.root, inJail), inJail };
    this.links.push(link);
    this.byHost.set(hostPath, link);
    return inJail;
  }
}
