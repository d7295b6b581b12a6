/**
 * E2B's users and commands on a container that is not E2B's image. E2B sandboxes have a `user`
 * (uid 1000, the default) and `root`; a shoal container has whatever its image configured. So:
 *
 *   - no user, or `user`: the container's own user (the image's USER, as `podman run` started
 *     it), through the direct exec: signals reach the process;
 *   - `root`: uid 0: the container's own user if that is root (asked once with `id -u`), else
 *     `podman exec --user 0` (whose signals stop at podman: such a process may outlive a kill);
 *   - any other name: refused.
 *
 * The SDK runs commands as `/bin/bash -l -c CMD` and PTYs as `/bin/bash -i -l`; in an image
 * without /bin/bash these run as `/bin/sh -c CMD` and `/bin/sh -i`. A cwd, on the direct path,
 * is entered by a `/bin/sh` that then execs the command (same process, so signals still reach it).
 */
export type E2bUser = 'user' | 'root';

/** The user of a call: the Basic authorization's user name (the SDK's `user` option), if any. */
export function userOfAuthorization(header: string | undefined): E2bUser | { problem: string } | undefined {
  if (header === undefined || header === '') return undefined;
  const m = /^basic +([A-Za-z0-9+/=]{1,200})$/i.exec(header.trim());
  if (!m) return { problem: 'malformed Authorization header (expected Basic)' };
  const decoded = Buffer.from(m[1]!, 'base64').toString('utf8');
  const name = decoded.split(':')[0] ?? '';
  return parseUser(name);
}

export function parseUser(name: string | undefined): E2bUser | { problem: string } | undefined {
  if (name === undefined || name === '') return undefined;
  if (name === 'user' || name === 'root') return name;
  return { problem: `unknown user "${name.slice(0, 64)}": this sandbox has "user" (the container's own) and "root"` };
}

/** What ExecSpec.user becomes: nothing for the container's own user, uid 0 for root. */
export function execUser(user: E2bUser | undefined): string | undefined {
  return user === 'root' ? '0' : undefined;
}

/** The argv to run: bash's invocations fall back to sh when the image has no bash. */
export function commandArgv(cmd: string, args: string[], hasBash: boolean): string[] {
  if (hasBash || (cmd !== '/bin/bash' && cmd !== 'bash')) return [cmd, ...args];
  // bash's login (-l) has no sh equivalent worth keeping; -c and -i mean the same to sh.
  return ['/bin/sh', ...args.filter((a) => a !== '-l')];
}

/** argv run in directory cwd by a shell that execs it (the direct exec has no cwd of its own). */
export function withCwd(argv: string[], cwd: string): string[] {
  return ['/bin/sh', '-c', 'cd -- "$1" || exit 1; shift; exec "$@"', 'envd-cwd', cwd, ...argv];
}
