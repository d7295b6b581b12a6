/**
 * How a Firecracker process is started and how host paths are named to it:
 * directly (`firecracker --api-sock <runDir>/fc.sock --id <id>`) or under
 * the jailer (paths become names inside the chroot, files are hard-linked
 * in once the jail exists); unjailed, optionally inside the user and network
 * namespaces that hold the VM's TAP. Both run under `setpriv --pdeathsig KILL` when
 * setpriv is available, so the VMM never outlives its supervisor.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DEFAULT_CHROOT_BASE, JailPlanner, jailLayout, jailerArgv, JAIL_VSOCK, type JailerOptions, type JailLayout } from './jailer';
import { ShoalError } from '../../util/errors';
import { runFiles } from './requests';
import { enterNamespacesArgv, enterNetnsArgv } from '../../util/process';

export interface Launch {
  /** Full argv, argv[0] being the program to spawn. */
  argv: string[];
  /** Host path of the API socket. */
  apiSocket: string;
  /** Host path of the vsock UDS (what the host dials). */
  vsockHost: string;
  /** The vsock UDS as Firecracker names it. */
  vsockForVmm: string;
  /** Firecracker's log and metrics files (host paths) and their names for the VMM. */
  logHost: string;
  logForVmm: string;
  metricsHost: string;
  metricsForVmm: string;
  /**
   * Names hostPath for the VMM (identity without a jail). `writable`: the VMM writes it (a
   * read-write drive), so in a jail it is handed to the jail's uid:gid.
   */
  place(hostPath: string, role: string, writable?: boolean): string;
  /** Materialises planned links; call once the jail exists (after the API socket is up). */
  materialise(): Promise<void>;
  /** Files to remove before spawning (stale sockets). */
  staleFiles: string[];
  /** The unprivileged owner the jailer drops to: files the VMM writes must be theirs. */
  owner?: { uid: number; gid: number };
  jail?: JailLayout;
}

/** `setpriv --pdeathsig KILL --` prefix, or [] when setpriv is disabled. */
export function pdeathsigPrefix(setpriv: string | false): string[] {
  return setpriv ? [setpriv, '--pdeathsig', 'KILL', '--'] : [];
}

export function plainLaunch(opts: { binary: string; id: string; runDir: string; setpriv: string | false; extraArgs?: string[]; namespacePid?: number; netnsPath?: string }): Launch {
  const f = runFiles(opts.runDir);
  // In a network namespace of its own (--network slirp4netns), or a pod's (--network ns:PATH):
  // nsenter execs setpriv in place.
  const enter = opts.namespacePid !== undefined ? enterNamespacesArgv(opts.namespacePid) : opts.netnsPath !== undefined ? enterNetnsArgv(opts.netnsPath) : [];
  return {
    argv: [...enter, ...pdeathsigPrefix(opts.setpriv), opts.binary, '--api-sock', f.apiSocket, '--id', opts.id, ...(opts.extraArgs ?? [])],
    apiSocket: f.apiSocket,
    vsockHost: f.vsock,
    vsockForVmm: f.vsock,
    logHost: f.log,
    logForVmm: f.log,
    metricsHost: f.metrics,
    metricsForVmm: f.metrics,
    place: (p) => p,
    materialise: async () => {},
    staleFiles: [f.apiSocket, f.vsock],
  };
}

/**
 * Hard-links a file into the jail. A read-only file (kernel, initrd, rootfs) on another
 * filesystem is copied instead; a file the VM writes never is: the VM would write to the
 * copy and the host's file (the one snapshots and the record point at) would not change.
 */
export async function linkIntoJail(from: string, to: string, writable: boolean): Promise<void> {
  await fs.promises.rm(to, { force: true });
  try {
    await fs.promises.link(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    if (writable) {
      throw new ShoalError(`${from} is on another filesystem than the jail ${path.dirname(to)}: the VM's writable disk must be hard-linked into the jail, never copied; put --jailer-chroot on the same filesystem as the state directory`);
    }
    await fs.promises.copyFile(from, to);
  }
}

/**
 * What the jailer will make of its --exec-file and --chroot-base-dir (v1.16.1 src/jailer/src/
 * env.rs, Env::new and validate_exec_file): both canonicalized, the base must be an existing
 * directory (the jailer exits otherwise, so it is created here, root-owned, 0755) and the jail is
 * named after the resolved binary's file name. Returns the canonical paths the layout is built from.
 */
export function canonicalJailPaths(binary: string, chrootBaseDir: string): { binary: string; chrootBaseDir: string } {
  let base: string;
  try {
    fs.mkdirSync(chrootBaseDir, { recursive: true, mode: 0o755 });
    base = fs.realpathSync(chrootBaseDir);
  } catch (err) {
    throw new ShoalError(`cannot create the jailer's chroot base ${chrootBaseDir}: ${(err as Error).message}`);
  }
  if (!fs.statSync(base).isDirectory()) throw new ShoalError(`the jailer's chroot base ${chrootBaseDir} is not a directory`);
  let exec: string;
  try {
    exec = fs.realpathSync(binary);
  } catch (err) {
    throw new ShoalError(`cannot resolve the Firecracker binary ${binary}: ${(err as Error).message}`);
  }
  if (!fs.statSync(exec).isFile()) throw new ShoalError(`the Firecracker binary ${binary} is not a file`);
  return { binary: exec, chrootBaseDir: base };
}

export function jailedLaunch(opts: { jailer: Omit<JailerOptions, 'id' | 'firecrackerBinary'>; binary: string; id: string; setpriv: string | false }): Launch {
  const canonical = canonicalJailPaths(opts.binary, opts.jailer.chrootBaseDir ?? DEFAULT_CHROOT_BASE);
  const full: JailerOptions = { ...opts.jailer, id: opts.id, firecrackerBinary: canonical.binary, chrootBaseDir: canonical.chrootBaseDir };
  const layout = jailLayout(full);
  const planner = new JailPlanner(layout);
  const writable = new Set<string>();
  const owner = { uid: full.uid, gid: full.gid };
  return {
    // Note: the jailer drops privileges before exec, which clears the parent-death signal;
    // pdeathsig then only covers the jailer's own lifetime (see docs/firecracker.md).
    argv: [...pdeathsigPrefix(opts.setpriv), ...jailerArgv(full)],
    apiSocket: layout.apiSocket,
    vsockHost: layout.vsockHost,
    vsockForVmm: JAIL_VSOCK,
    logHost: path.join(layout.root, 'firecracker.log'),
    logForVmm: '/firecracker.log',
    metricsHost: path.join(layout.root, 'firecracker.metrics'),
    metricsForVmm: '/firecracker.metrics',
    place: (p, role, isWritable) => {
      const inJail = planner.place(p, role);
      if (isWritable) writable.add(path.join(layout.root, inJail));
      return inJail;
    },
    materialise: async () => {
      for (const l of planner.links) await linkIntoJail(l.from, l.to, writable.has(l.to));
      // A hard link shares its inode: the VM's own writable file (its scratch disk) changes owner
      // on the host too, which is what lets the jailed VMM, and only it, write it.
      for (const file of writable) await fs.promises.chown(file, owner.uid, owner.gid);
    },
    staleFiles: [],
    owner,
    jail: layout,
  };
}
