/**
 * The requests and messages that travel on channels. Shared by the host and the guest agent
 * (Node built-ins only). Every channel starts with one request (the Open frame's JSON).
 */
import os from 'node:os';
import type { KeepOptions, KeptAttachRequest, KeptListRequest } from './kept';

/** Run a process in the guest OS, with stdio on the channel (stream 0 in, 1 out, 2 err). */
export interface ExecRequest {
  kind: 'exec';
  argv: string[];
  env?: Record<string, string>;
  cwd?: string;
  /** Attach stdin: when false, the process's stdin is /dev/null. */
  stdin: boolean;
  /**
   * Keep the process running when the channel closes or the session resets (its output is then
   * read and dropped): the main container, which must survive into snapshot clones.
   */
  persistent?: boolean;
  /**
   * Run the process on a pseudo-terminal of this size: stdin, stdout and stderr are all the
   * terminal (output on stream 1 only), and 'resize' messages follow the host window.
   */
  tty?: TerminalSize;
  /**
   * The exec is into this container: the agent may enter it directly (`crun exec` with the
   * container's own process settings) instead of running argv (`podman exec`), which stays the
   * fallback when it cannot.
   */
  container?: ContainerExecTarget;
  /**
   * Record the process in the agent's table of kept processes (src/protocol/kept.ts): it outlives
   * its channel and the host's session (a restarted API server, a pause and resume) and can be
   * listed and attached to, its recent output replayed. It runs in its own process group, and
   * signals reach the whole group.
   */
  keep?: KeepOptions;
}

/** A command for a running container, as `podman exec NAME ARGV` with `--env` pairs would run it. */
export interface ContainerExecTarget {
  name: string;
  argv: string[];
  env: Record<string, string>;
  /** podman exec --user USER[:GROUP] (names resolved in the container's /etc/passwd and /etc/group). */
  user?: string;
  /** podman exec --workdir (absolute, in the container). */
  workdir?: string;
}

export interface TerminalSize {
  cols: number;
  rows: number;
}

/** Facts about the guest: what the user asked for must be visible here. */
export interface InfoRequest {
  kind: 'info';
}

export interface GuestInfo {
  memTotalKiB: number;
  cpus: number;
  uptimeSeconds: number;
  kernel: string;
  hostname: string;
}

/** Flush disks and power the guest off. */
export interface PowerOffRequest {
  kind: 'poweroff';
}

/**
 * Mount a FUSE file system at mountpoint (under /run/shoal/maps/) and carry its requests on the
 * channel: kernel requests to the host on stream 1, the host's replies on stream 0. The agent
 * answers { type: 'mounted' } once the mount is in place.
 */
export interface FuseMountRequest {
  kind: 'fuse-mount';
  mountpoint: string;
  readOnly: boolean;
}

/** Follow the persistent process (the main container) from now on: output, exit, signals. */
export interface AttachPersistentRequest {
  kind: 'attach-persistent';
}

export type AgentRequest = ExecRequest | InfoRequest | PowerOffRequest | FuseMountRequest | AttachPersistentRequest | KeptListRequest | KeptAttachRequest;

/** Session start, host to guest, after the sync marker. */
export interface Hello {
  session: string;
  /** Host wall clock in ms, so a restored guest can step its clock. */
  timeMs: number;
  /** Fresh host randomness (hex) mixed into the guest's pool, so clones never share random state. */
  seed: string;
  /**
   * A clone's own network identity, where it differs from its source's (a bridged clone gets
   * its own MAC and address on the shared bridge); applied to eth0 before the HELLO_ACK.
   */
  network?: GuestNetworkIdentity;
  /** A clone's own host name (it still carries its source's); set before the HELLO_ACK. */
  hostname?: string;
  /**
   * Set on the first session of a VM restored from a snapshot (a clone, a fork child, an
   * image-cache hit): the agent then runs a clone's recovery. Any other new session is a boot or
   * the same host reconnecting (after Firecracker's vsock reset at a snapshot), which must not
   * flush the VM's neighbours or kill its connections. Said by the host, not guessed by the
   * agent: on vsock each connection is a fresh agent session, so it cannot tell a clone's first
   * connection from its source's reconnect.
   */
  restored?: boolean;
}

export interface GuestNetworkIdentity {
  mac: string;
  /** ADDRESS/PREFIXLEN */
  address: string;
  gateway: string;
}

export interface HelloAck {
  session: string;
  agentVersion: string;
}

/** Messages on an exec channel. */
export type ExecMessage =
  /** guest -> host: the process ended (after all its output was sent). */
  | { type: 'exit'; code: number | null; signal: string | null }
  /** guest -> host: the process could not be started. */
  | { type: 'error'; message: string }
  /** host -> guest: deliver a signal to the process. */
  | { type: 'signal'; signal: string }
  /** host -> guest: the host terminal changed size (exec with a tty only). */
  | { type: 'resize'; cols: number; rows: number };

/** A terminal size from a message, or undefined when it is not a sane one. */
export function terminalSizeOf(value: unknown): TerminalSize | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const { cols, rows } = value as Record<string, unknown>;
  const ok = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n > 0 && n <= 10_000;
  return ok(cols) && ok(rows) ? { cols, rows } : undefined;
}

/**
 * The one exit-code rule, for every exit message (agent exec, supervisor attach): the process's
 * code, or, killed by a signal, 128 + the signal's number (the shell's convention); `fallback`
 * when neither is known.
 */
export function exitCodeOf(exit: { code?: unknown; signal?: unknown }, fallback = 255): number {
  if (typeof exit.code === 'number' && Number.isInteger(exit.code)) return exit.code;
  const signals: Readonly<Record<string, number>> = os.constants.signals;
  const number = typeof exit.signal === 'string' ? signals[exit.signal] : undefined;
  if (number !== undefined) return 128 + number;
  return fallback;
}
