/**
 * A fake `jailer` that follows what Firecracker v1.16.1's jailer does before it execs the VMM
 * (src/jailer/src/env.rs, Env::new / validate_exec_file / run):
 *  - the id: 1-64 alphanumerics or `-` (utils validators.rs validate_instance_id);
 *  - --exec-file is canonicalized (symlinks resolved) and must be a file; the jail is named after
 *    the CANONICAL file name: `<chroot_base>/<exec_file_name>/<id>/root`;
 *  - --chroot-base-dir is canonicalized (so it must exist) and must be a directory; else exit 1;
 *  - the pid goes to `<root>/<exec_file_name>.pid` (create_new); with --new-pid-ns the jailer
 *    clones Firecracker into a new PID namespace, writes the child's pid and exits 0 at once.
 * What it does not do: chroot, cgroups, mknod, dropping to uid:gid (the exec'd fake Firecracker
 * is told the jail root in FAKE_FC_ROOT and resolves every in-jail path under it).
 *
 * Usage: writeFakeJailer(dir) writes an executable `jailer` (sh) that runs this file to check
 * and prepare, then `exec`s the fake Firecracker in place (same pid, as the real jailer's exec).
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export function writeFakeJailer(dir: string): string {
  const bin = path.join(dir, 'jailer');
  fs.mkdirSync(dir, { recursive: true });
  // The node part prints the exec line (shell-quoted) on success; the shell execs it in place.
  fs.writeFileSync(bin, `#!/bin/sh\nline=$(${JSON.stringify(process.execPath)} ${JSON.stringify(__filename)} "$@") || exit $?\neval "exec $line"\n`, { mode: 0o755 });
  return bin;
}

function fail(message: string): never {
  process.stderr.write(`Jailer error: ${message}\n`);
  process.exit(1);
}

const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

function main(): void {
  const argv = process.argv.slice(2);
  const sep = argv.indexOf('--');
  const own = sep >= 0 ? argv.slice(0, sep) : argv;
  const extra = sep >= 0 ? argv.slice(sep + 1) : [];
  const one = (name: string): string | undefined => {
    const i = own.indexOf(name);
    return i >= 0 ? own[i + 1] : undefined;
  };
  const id = one('--id') ?? fail('Argument id is missing');
  if (!/^[A-Za-z0-9-]{1,64}$/.test(id)) fail(`Invalid instance ID: ${id}`);
  const execFile = one('--exec-file') ?? fail('Argument exec-file is missing');
  let exec: string;
  try {
    exec = fs.realpathSync(execFile);
  } catch (e) {
    fail(`Failed to canonicalize path ${execFile}: ${(e as Error).message}`);
  }
  if (!fs.statSync(exec).isFile()) fail(`${exec} is not a file`);
  const execName = path.basename(exec);
  const baseArg = one('--chroot-base-dir') ?? '/srv/jailer';
  let base: string;
  try {
    base = fs.realpathSync(baseArg);
  } catch (e) {
    fail(`Failed to canonicalize path ${baseArg}: ${(e as Error).message}`);
  }
  if (!fs.statSync(base).isDirectory()) fail(`${base} is not a directory`);
  for (const name of ['--uid', '--gid']) if (!/^\d+$/.test(one(name) ?? '')) fail(`Invalid ${name.slice(2)} value`);
  const root = path.join(base, execName, id, 'root');
  fs.mkdirSync(root, { recursive: true });
  fs.chownSync(root, Number(one('--uid')), Number(one('--gid')));
  const args = [exec, '--id', id, '--start-time-us', '0', '--start-time-cpu-us', '0', '--parent-cpu-time-us', '0', ...extra];
  const pidFile = path.join(root, `${execName}.pid`);
  if (own.includes('--new-pid-ns')) {
    // clone(CLONE_NEWPID): the child runs Firecracker, this process writes its pid and exits 0.
    const child = spawn(args[0]!, args.slice(1), { detached: true, stdio: 'ignore', env: { ...process.env, FAKE_FC_ROOT: root } });
    fs.writeFileSync(pidFile, String(child.pid), { flag: 'wx' });
    child.unref();
    process.stdout.write('true\n');
    return;
  }
  // The exec keeps this pid (the shell's): the wrapper is this process's parent.
  fs.writeFileSync(pidFile, String(process.ppid), { flag: 'wx' });
  process.stdout.write(`env FAKE_FC_ROOT=${quote(root)} ${args.map(quote).join(' ')}\n`);
}

if (require.main === module) main();
