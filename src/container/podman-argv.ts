/**
 * The podman command lines the guest runs. Built on the host so the agent stays a generic
 * process runner. One container per VM, named MAIN_CONTAINER; it shares the VM's network
 * namespace (the VM is the isolation boundary), and conmon keeps stdout and stderr apart.
 */

import { containerOptionArgv, type ContainerOptions } from './container-options';

export const MAIN_CONTAINER = 'main';

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
}

export function podmanRunArgv(options: RunOptions): string[] {
  const argv = ['podman', 'run', '--name', MAIN_CONTAINER, '--network', 'host', '--pull', 'never', '--log-driver', 'none'];
  if (options.interactive) argv.push('--interactive');
  if (options.tty) argv.push('--tty');
  for (const volume of options.volumes ?? []) argv.push('--volume', `${volume.source}:${volume.target}${volume.readOnly ? ':ro' : ''}`);
  argv.push(...containerOptionArgv(options.container ?? {}));
  for (const [key, value] of Object.entries(options.env)) argv.push('--env', `${key}=${value}`);
  argv.push(options.image, ...options.command);
  return argv;
}

export interface ExecOptions {
  env: Record<string, string>;
  interactive: boolean;
  tty?: boolean;
  user?: string;
  workdir?: string;
}

export function podmanExecArgv(command: string[], options: ExecOptions): string[] {
  const argv = ['podman', 'exec'];
  if (options.interactive) argv.push('--interactive');
  if (options.tty) argv.push('--tty');
  if (options.user !== undefined) argv.push('--user', options.user);
  if (options.workdir !== undefined) argv.push('--workdir', options.workdir);
  for (const [key, value] of Object.entries(options.env)) argv.push('--env', `${key}=${value}`);
  argv.push(MAIN_CONTAINER, ...command);
  return argv;
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
