/**
 * Whether a Firecracker process can create the userfaultfd its Uffd memory backend needs.
 *
 * v1.16.1 (src/vmm/src/persist.rs, guest_memory_from_uffd) builds it with
 * `user_mode_only(false)`. On kernels with /dev/userfaultfd (6.1+) access is by file
 * permissions (docs/snapshotting/handling-page-faults-on-snapshot-resume.md: "the Firecracker
 * process needs to have proper permissions"); the userfaultfd(2) syscall without
 * UFFD_USER_MODE_ONLY needs CAP_SYS_PTRACE unless vm.unprivileged_userfaultfd is 1. A process in
 * a slirp4netns user namespace has no CAP_SYS_PTRACE over the host.
 */
import fs from 'node:fs';

export interface UffdAccessOptions {
  device?: string;
  sysctl?: string;
  /** The VMM has CAP_SYS_PTRACE in the initial user namespace (not in a slirp4netns namespace). */
  privileged: boolean;
}

export function uffdAccessProblem(opts: UffdAccessOptions): string | null {
  const device = opts.device ?? '/dev/userfaultfd';
  try {
    fs.accessSync(device, fs.constants.R_OK | fs.constants.W_OK);
    return null;
  } catch {
    /* try the syscall's rules */
  }
  if (opts.privileged) return null;
  try {
    if (fs.readFileSync(opts.sysctl ?? '/proc/sys/vm/unprivileged_userfaultfd', 'utf8').trim() === '1') return null;
  } catch {
    /* no such sysctl: the syscall needs the capability */
  }
  return `the Uffd memory backend needs read-write access to ${device} (e.g. \`setfacl -m u:$USER:rw ${device}\`) or CAP_SYS_PTRACE, which a slirp4netns user namespace cannot give`;
}

/** capability(7) number of CAP_SYS_PTRACE. */
const CAP_SYS_PTRACE = 19;

/**
 * Whether this process (and so the VMM it starts, which inherits its capabilities) holds
 * CAP_SYS_PTRACE, read from CapEff in /proc/self/status: euid 0 does not imply it (a container
 * may drop it, as Docker's default set does).
 */
export function hasSysPtrace(status: string = readStatus()): boolean {
  const hex = /^CapEff:\s*([0-9a-f]+)\s*$/im.exec(status)?.[1];
  if (!hex) return false;
  return (BigInt(`0x${hex}`) >> BigInt(CAP_SYS_PTRACE)) & 1n ? true : false;
}

function readStatus(): string {
  try {
    return fs.readFileSync('/proc/self/status', 'utf8');
  } catch {
    return '';
  }
}
