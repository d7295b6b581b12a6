/**
 * The podman command lines the guest runs. Built on the host so the agent stays a generic
 * process runner. One container per VM, named MAIN_CONTAINER; it shares the VM's network
 * namespace (the VM is the isolation boundary), and conmon keeps stdout and stderr apart.
 */

import { containerOptionArgv, type ContainerOptions } from './container-options';

export const MAIN_CONTAINER = 'main';

/**
 * Names podman (and conmon, crun) read from their own environment: a container value for one of
 * these cannot ride in podman's environment without changing how podman itself runs, so it
 * stays in the argv as KEY=VALUE (visible only inside the VM, outside the container's PID
 * namespace).
 */
const PODMAN_OWN_ENV = /^(PATH|HOME|USER|LOGNAME|SHELL|PWD|TMPDIR|TERM|TZ|LANG|LANGUAGE|LC_[A-Z_]+|LD_[A-Z_]+|XDG_[A-Z_]+|CONTAINERS_[A-Z_]+|PODMAN_[A-Z_]+|BUILDAH_[A-Z_]+|STORAGE_[A-Z_]+|REGISTRIES_CONFIG_PATH|NOTIFY_SOCKET|LISTEN_[A-Z_]+|DBUS_[A-Z_]+|GODEBUG|GOMAXPROCS|GOTRACEBACK|SSL_CERT_[A-Z_]+|HTTPS?_PROXY|https?_proxy|NO_PROXY|no_proxy|FTP_PROXY|ftp_proxy|ALL_PROXY|all_proxy)$/;

/**
 * The container's environment as podman options without the values: `--env KEY` (podman takes
 * the value from its own environment) and the values in `processEnv`, for the agent to give the
 * podman process. So a secret is not in any command line (/proc/PID/cmdline is world-readable).
 */
export function podmanEnvArgs(env: Record<string, string>): { args: string[]; processEnv: Record<string, string> } {
  const args: string[] = [];
  const processEnv: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) {
    if (PODMAN_OWN_ENV.test(key)) {
      args.push('--env', `${key}=${value}`);
    } else {
      args.push('--env', key);
      processEnv[key] = value;
    }
  }
  return { args, processEnv };
}

export interface RunOptions {
  image: string;
  command: string[];
  env: Record<string, string>;
  interactive: boolean;
  /** Give the container a terminal (podman runs on one the agent made, and passes its size on). */
  tty?: boolean;
  /** Guest-OS directories bind-mounted into the container (the FUSE mounts of --map). */
  volumes?: { source: string; target: string; readOnly: boolean }[];
  /** --user, --workdir, --entrypoint, --privileged, ... (src/container/container-options.ts). */
  container?: ContainerOptions;
  /** The container's name (default MAIN_CONTAINER; a pod's other containers have their own). */
  name?: string;
  /** `image` is a root filesystem directory in the guest (podman --rootfs), not an image. */
  rootfs?: boolean;
  /** podman --cidfile: where podman writes the container's id. */
  cidfile?: string;
}

/** `podman run`'s argv, and the environment its process needs for the bare `--env KEY`s. */
export function podmanRun(options: RunOptions): { argv: string[]; processEnv: Record<string, string> } {
  const argv = ['podman', 'run', '--name', options.name ?? MAIN_CONTAINER, '--network', 'host', '--pull', 'never', '--log-driver', 'none'];
  if (options.interactive) argv.push('--interactive');
  if (options.tty) argv.push('--tty');
  if (options.cidfile !== undefined) argv.push('--cidfile', options.cidfile);
  for (const volume of options.volumes ?? []) argv.push('--volume', `${volume.source}:${volume.target}${volume.readOnly ? ':ro' : ''}`);
  argv.push(...containerOptionArgv(options.container ?? {}));
  const env = podmanEnvArgs(options.env);
  argv.push(...env.args);
  if (options.rootfs) argv.push('--rootfs');
  argv.push(options.image, ...options.command);
  return { argv, processEnv: env.processEnv };
}

export interface ExecOptions {
  env: Record<string, string>;
  interactive: boolean;
  tty?: boolean;
  user?: string;
  workdir?: string;
  /** Which container (default MAIN_CONTAINER). */
  name?: string;
}

/** `podman exec`'s argv, and the environment its process needs for the bare `--env KEY`s. */
export function podmanExec(command: string[], options: ExecOptions): { argv: string[]; processEnv: Record<string, string> } {
  const argv = ['podman', 'exec'];
  if (options.interactive) argv.push('--interactive');
  if (options.tty) argv.push('--tty');
  if (options.user !== undefined) argv.push('--user', options.user);
  if (options.workdir !== undefined) argv.push('--workdir', options.workdir);
  const env = podmanEnvArgs(options.env);
  argv.push(...env.args);
  argv.push(options.name ?? MAIN_CONTAINER, ...command);
  return { argv, processEnv: env.processEnv };
}

/** Returns once the main container runs; fails while it does not exist yet. */
export function podmanWaitRunningArgv(): string[] {
  return ['podman', 'wait', '--condition', 'running', '--interval', '100ms', MAIN_CONTAINER];
}

export function podmanLoadArgv(): string[] {
  return ['podman', 'load', '--quiet'];
}

export function podmanPullArgv(reference: string): string[] {
  return ['podman', 'pull', '--quiet', reference];
}

/** Parses repeated KEY=VALUE options; a bare KEY takes the value from the host, as podman does. */
export function parseEnv(pairs: string[], hostEnv: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    const key = eq < 0 ? pair : pair.slice(0, eq);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new Error(`invalid environment variable name "${key}"`);
    if (eq < 0) {
      const value = hostEnv[key];
      if (value !== undefined) env[key] = value;
    } else env[key] = pair.slice(eq + 1);
  }
  return env;
}
