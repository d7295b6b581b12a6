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
  /** The VMM runs as root in the initial user namespace (not in a slirp4netns namespace). */
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
