/**
 * The podman `run` flags that shape the container itself (who runs it, where, with which
 * privileges), parsed once where the user typed them and stored in the VM's config, so a clone,
 * a fork, the image-cache key and `shoal inspect` all see the same values. Each parser throws a
 * one-line ShoalError naming the flag.
 */
import path from 'node:path';
import { ShoalError } from '../util/errors';

export interface ContainerOptions {
  /** podman --user: USER[:GROUP], names or numeric ids (resolved by podman in the guest). */
  user?: string;
  /** podman --workdir: an absolute path in the container. */
  workdir?: string;
  /** podman --entrypoint, as an argv (empty: the image's entrypoint is cleared). */
  entrypoint?: string[];
  /** The container's and the guest's hostname (--hostname). */
  hostname?: string;
  labels?: Record<string, string>;
  /** The container's root filesystem read-only (not the VM's scratch disk). */
  readOnly?: boolean;
  /** An init process (catatonit) as the container's PID 1. */
  init?: boolean;
  capAdd?: string[];
  capDrop?: string[];
  /** All capabilities and the guest's devices (the VM stays the isolation boundary). */
  privileged?: boolean;
  /** Seconds between SIGTERM and SIGKILL when the container is stopped. */
  stopTimeout?: number;
  /** podman --ulimit NAME=SOFT:HARD (-1: unlimited), from an OCI bundle's process.rlimits. */
  ulimits?: string[];
  /** podman --tmpfs DEST[:OPTIONS], from an OCI bundle's tmpfs mounts. */
  tmpfs?: string[];
}

/**
 * The capabilities podman knows (containers/common's list, CAP_CHOWN through
 * CAP_CHECKPOINT_RESTORE); podman accepts them with or without CAP_, in any case, and ALL.
 */
export const CAPABILITIES: readonly string[] = [
  'CHOWN', 'DAC_OVERRIDE', 'DAC_READ_SEARCH', 'FOWNER', 'FSETID', 'KILL', 'SETGID', 'SETUID', 'SETPCAP',
  'LINUX_IMMUTABLE', 'NET_BIND_SERVICE', 'NET_BROADCAST', 'NET_ADMIN', 'NET_RAW', 'IPC_LOCK', 'IPC_OWNER',
  'SYS_MODULE', 'SYS_RAWIO', 'SYS_CHROOT', 'SYS_PTRACE', 'SYS_PACCT', 'SYS_ADMIN', 'SYS_BOOT', 'SYS_NICE',
  'SYS_RESOURCE', 'SYS_TIME', 'SYS_TTY_CONFIG', 'MKNOD', 'LEASE', 'AUDIT_WRITE', 'AUDIT_CONTROL', 'SETFCAP',
  'MAC_OVERRIDE', 'MAC_ADMIN', 'SYSLOG', 'WAKE_ALARM', 'BLOCK_SUSPEND', 'AUDIT_READ', 'PERFMON', 'BPF',
  'CHECKPOINT_RESTORE',
];

/** podman's longest stop timeout is a uint; a day is plenty and keeps the waits bounded. */
export const MAX_STOP_TIMEOUT_S = 86_400;

const ID_PART = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$/;

/** USER[:GROUP], each a name or a numeric id; whether the user exists is podman's to say. */
export function parseUser(value: string, flag = '--user'): string {
  const parts = value.split(':');
  if (parts.length > 2 || parts.some((p) => !ID_PART.test(p))) {
    throw new ShoalError(`invalid ${flag} "${value}": expected USER[:GROUP] (names or numeric ids)`);
  }
  return value;
}

export function parseWorkdir(value: string, flag = '--workdir'): string {
  if (!path.posix.isAbsolute(value)) throw new ShoalError(`invalid ${flag} "${value}": must be an absolute path`);
  if (value.length > 4096 || /[\0\n]/.test(value)) throw new ShoalError(`invalid ${flag}: not a usable path`);
  return path.posix.normalize(value);
}

/** podman's --entrypoint: a JSON array of strings, or one string that is the program ("" clears it). */
export function parseEntrypoint(value: string): string[] {
  if (value.trimStart().startsWith('[')) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(value);
    } catch {
      throw new ShoalError(`invalid --entrypoint "${value}": not a JSON array`);
    }
    if (!Array.isArray(parsed) || !parsed.every((a) => typeof a === 'string')) {
      throw new ShoalError(`invalid --entrypoint "${value}": expected a JSON array of strings`);
    }
    return parsed as string[];
  }
  return value === '' ? [] : [value];
}

/** RFC 1123 host names (it also goes on the guest's kernel command line, so no spaces). */
export function parseHostname(value: string): string {
  const label = /^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
  if (value.length > 253 || !value.split('.').every((l) => label.test(l))) {
    throw new ShoalError(`invalid --hostname "${value}": expected an RFC 1123 host name`);
  }
  return value;
}

/** --label KEY[=VALUE], repeatable; a later KEY wins, as in podman. */
export function parseLabels(values: string[]): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const value of values) {
    const eq = value.indexOf('=');
    const key = eq < 0 ? value : value.slice(0, eq);
    if (key.length === 0 || key.length > 1024 || /[\s\0]/.test(key)) throw new ShoalError(`invalid --label "${value}": expected KEY[=VALUE]`);
    if (/[\0\n]/.test(value)) throw new ShoalError(`invalid --label "${key}": the value has a newline or NUL`);
    labels[key] = eq < 0 ? '' : value.slice(eq + 1);
  }
  return labels;
}

/** Capability names as podman spells them (CAP_ prefix, upper case), or ALL. */
export function parseCapabilities(values: string[], flag: string): string[] {
  const caps: string[] = [];
  for (const raw of values.flatMap((v) => v.split(','))) {
    const name = raw.trim().toUpperCase();
    if (name === 'ALL') {
      caps.push('ALL');
      continue;
    }
    const bare = name.startsWith('CAP_') ? name.slice(4) : name;
    if (!CAPABILITIES.includes(bare)) throw new ShoalError(`invalid ${flag} "${raw}": unknown capability`);
    caps.push(`CAP_${bare}`);
  }
  return [...new Set(caps)];
}

export function parseStopTimeout(value: string, flag: string): number {
  if (!/^\d+$/.test(value.trim()) || Number(value) > MAX_STOP_TIMEOUT_S) {
    throw new ShoalError(`invalid ${flag} "${value}": expected whole seconds (0 to ${MAX_STOP_TIMEOUT_S})`);
  }
  return Number(value);
}

/** --health-check: an http(s) URL polled in the guest (src/supervisor/health-check.ts). */
export function parseHealthCheck(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ShoalError(`invalid --health-check "${value}": not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ShoalError(`invalid --health-check "${value}": expected an http:// or https:// URL`);
  return url.toString();
}

/** The flags as typed (commander's shape), before parsing. */
export interface ContainerFlags {
  user?: string;
  workdir?: string;
  entrypoint?: string;
  hostname?: string;
  label?: string[];
  readOnly?: boolean;
  init?: boolean;
  capAdd?: string[];
  capDrop?: string[];
  privileged?: boolean;
  stopTimeout?: string;
}

/** Only the options the user gave are stored, so a plain run's config (and cache key) stays as before. */
export function parseContainerOptions(flags: ContainerFlags): ContainerOptions {
  const options: ContainerOptions = {};
  if (flags.user !== undefined) options.user = parseUser(flags.user);
  if (flags.workdir !== undefined) options.workdir = parseWorkdir(flags.workdir);
  if (flags.entrypoint !== undefined) options.entrypoint = parseEntrypoint(flags.entrypoint);
  if (flags.hostname !== undefined) options.hostname = parseHostname(flags.hostname);
  if (flags.label !== undefined && flags.label.length > 0) options.labels = parseLabels(flags.label);
  if (flags.readOnly === true) options.readOnly = true;
  if (flags.init === true) options.init = true;
  if (flags.capAdd !== undefined && flags.capAdd.length > 0) options.capAdd = parseCapabilities(flags.capAdd, '--cap-add');
  if (flags.capDrop !== undefined && flags.capDrop.length > 0) options.capDrop = parseCapabilities(flags.capDrop, '--cap-drop');
  if (flags.privileged === true) options.privileged = true;
  if (flags.stopTimeout !== undefined) options.stopTimeout = parseStopTimeout(flags.stopTimeout, '--stop-timeout');
  return options;
}

/** The podman run arguments for these options. */
export function containerOptionArgv(options: ContainerOptions): string[] {
  const argv: string[] = [];
  if (options.user !== undefined) argv.push('--user', options.user);
  if (options.workdir !== undefined) argv.push('--workdir', options.workdir);
  // podman reads a value that parses as a JSON array as the argv (so `[]` clears the image's).
  if (options.entrypoint !== undefined) argv.push('--entrypoint', JSON.stringify(options.entrypoint));
  for (const [key, value] of Object.entries(options.labels ?? {})) argv.push('--label', `${key}=${value}`);
  if (options.readOnly) argv.push('--read-only');
  if (options.init) argv.push('--init');
  if (options.privileged) argv.push('--privileged');
  for (const cap of options.capAdd ?? []) argv.push('--cap-add', cap);
  for (const cap of options.capDrop ?? []) argv.push('--cap-drop', cap);
  if (options.stopTimeout !== undefined) argv.push('--stop-timeout', String(options.stopTimeout));
  for (const ulimit of options.ulimits ?? []) argv.push('--ulimit', ulimit);
  for (const tmpfs of options.tmpfs ?? []) argv.push('--tmpfs', tmpfs);
  return argv;
}
