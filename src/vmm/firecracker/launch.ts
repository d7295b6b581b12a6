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
import { JailPlanner, jailLayout, jailerArgv, JAIL_VSOCK, type JailerOptions, type JailLayout } from './jailer';
import { runFiles } from './requests';
import { enterNamespacesArgv } from '../../util/process';

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
  /** Names hostPath for the VMM under a fixed VMM-side name (jail restores keep the snapshot's names). */
  placeAs(hostPath: string, vmmPath: string, writable?: boolean): string;
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

export function plainLaunch(opts: { binary: string; id: string; runDir: string; setpriv: string | false; extraArgs?: string[]; namespacePid?: number }): Launch {
  const f = runFiles(opts.runDir);
  // In a network namespace of its own (--network slirp4netns): nsenter execs setpriv in place.
  const enter = opts.namespacePid !== undefined ? enterNamespacesArgv(opts.namespacePid) : [];
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
    placeAs: (p) => p,
    materialise: async () => {},
    staleFiles: [f.apiSocket, f.vsock],
  };
}

/** Link, or copy when the jail is on another filesystem. */
async function linkOrCopy(from: string, to: string): Promise<void> {
  await fs.promises.rm(to, { force: true });
  try {
    await fs.promises.link(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    await fs.promises.copyFile(from, to);
  }
}

export function jailedLaunch(opts: { jailer: Omit<JailerOptions, 'id' | 'firecrackerBinary'>; binary: string; id: string; setpriv: string | false }): Launch {
  const full: JailerOptions = { ...opts.jailer, id: opts.id, firecrackerBinary: opts.binary };
  const layout = jailLayout(full);
  const planner = new JailPlanner(layout);
  const fixed: Array<{ from: string; to: string }> = [];
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
    placeAs: (p, vmmPath, isWritable) => {
      const to = path.join(layout.root, vmmPath);
      fixed.push({ from: p, to });
      if (isWritable) writable.add(to);
      return vmmPath;
    },
    materialise: async () => {
      for (const l of [...planner.links, ...fixed]) await linkOrCopy(l.from, l.to);
      // A hard link shares its inode: the VM's own writable file (its scratch disk) changes owner
      // on the host too, which is what lets the jailed VMM, and only it, write it.
      for (const file of writable) await fs.promises.chown(file, owner.uid, owner.gid);
    },
    staleFiles: [],
    owner,
    jail: layout,
  };
}
