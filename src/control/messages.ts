/**
 * The CLI<->supervisor control protocol: what travels on a VM's control socket (`ctl.sock`).
 * It rides the same channel multiplexing as the agent link (src/protocol/mux.ts): every channel
 * starts with one ControlRequest (the Open frame), the supervisor answers with ControlEvents,
 * the CLI may send ClientMessages, and stdio travels as data on streams 0/1/2.
 *
 * Both ends parse what they receive here, so a malformed request or reply is refused where it
 * enters instead of being cast into shape deep inside.
 */
import { FILES_OPS, MAX_PATH_LENGTH, type FilesOp } from '../protocol/files';
import type { TerminalSize } from '../protocol/messages';
import { terminalSizeOf } from '../protocol/messages';
import { validKeptTag, type KeepOptions } from '../protocol/kept';
import type { SnapshotRef, VmConfig } from '../state/vm-record';
import type { VmSpec } from '../vmm/backend';

/** Follow the VM: progress, `running`, and the final exit or error; with stdio, the main container's streams too. */
export type AttachRequest = { kind: 'attach'; stdio: boolean };

/** Run a command in the VM's container (podman exec) or, with vm, in the guest OS. */
export type ExecControlRequest = {
  kind: 'exec';
  argv: string[];
  env: Record<string, string>;
  interactive: boolean;
  vm: boolean;
  tty?: TerminalSize;
  /** podman exec --user / --workdir (container commands only). */
  user?: string;
  workdir?: string;
  /** Keep the process in the agent's table (src/protocol/kept.ts): it outlives this channel. */
  keep?: KeepOptions;
  /**
   * Which container of the VM (container commands only; default the main one): a pod's other
   * containers, which the containerd shim runs beside it.
   */
  container?: string;
};

/** List the agent's kept processes: one { type: 'result', processes } (parsed with parseKeptList), then the close. */
export type KeptListControlRequest = { kind: 'kept-list' };

/** Follow a kept process: the channel then carries its replayed and live output as an exec's does. */
export type KeptAttachControlRequest = { kind: 'kept-attach'; id: number };

/** Write state.bin, memory.raw and scratch.img of the VM into dir (an existing directory). */
export type SnapshotControlRequest = { kind: 'snapshot'; dir: string };

/** A file operation in the main container, relayed to the agent (src/protocol/files.ts has the exchange). */
export type FilesControlRequest = { kind: 'files'; op: FilesOp; path: string; to?: string; recursive?: boolean };

/** Graceful stop (the container gets SIGTERM through podman, then the VM powers off). */
export type StopRequest = { kind: 'stop'; /** stop -t: seconds between SIGTERM and SIGKILL. */ timeoutSeconds?: number };

export type ControlRequest = AttachRequest | ExecControlRequest | FilesControlRequest | SnapshotControlRequest | StopRequest | KeptListControlRequest | KeptAttachControlRequest;

/** What a snapshot request returns: what the CLI needs to write the snapshot's manifest. */
export type SnapshotResult = {
  type: 'result';
  vmSpec: VmSpec;
  config: VmConfig;
  loadedImage: string | null;
  /** The snapshot the VM was restored from (its lineage), or null for a booted VM. */
  parent: SnapshotRef | null;
  timings: { pausedMs: number; totalMs: number };
};

/** Supervisor -> CLI. */
export type ControlEvent =
  | { type: 'progress'; message: string }
  | { type: 'running'; name: string; id: string }
  /** The VM (attach) or the command (exec) ended; exec replies carry the signal that killed it. */
  | { type: 'exit'; code: number | null; signal?: string | null }
  | { type: 'error'; message: string }
  | SnapshotResult
  /** A stop request was taken. */
  | { type: 'result' };

/** CLI -> supervisor, on an attach or exec channel. */
export type ClientMessage = { type: 'resize'; cols: number; rows: number } | { type: 'signal'; signal: string };

/** Longest argv/env the control socket accepts in one exec request. */
const MAX_ARGS = 4096;

type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isString = (v: unknown): v is string => typeof v === 'string';
const isStringArray = (v: unknown): v is string[] => Array.isArray(v) && v.length <= MAX_ARGS && v.every(isString);

function isStringRecord(v: unknown): v is Record<string, string> {
  return isObject(v) && Object.keys(v).length <= MAX_ARGS && Object.values(v).every(isString);
}

/** The supervisor's side: a channel's opening request, or why it is refused. */
export function parseControlRequest(value: unknown): Parsed<ControlRequest> {
  if (!isObject(value)) return { ok: false, error: 'malformed request' };
  switch (value.kind) {
    case 'attach':
      return { ok: true, value: { kind: 'attach', stdio: value.stdio === true } };
    case 'exec': {
      if (!isStringArray(value.argv)) return { ok: false, error: 'malformed exec request: argv must be a list of strings' };
      const env = value.env ?? {};
      if (!isStringRecord(env)) return { ok: false, error: 'malformed exec request: env must map names to strings' };
      const request: ExecControlRequest = { kind: 'exec', argv: value.argv, env, interactive: value.interactive === true, vm: value.vm === true };
      if (value.tty !== undefined) {
        const tty = terminalSizeOf(value.tty);
        if (!tty) return { ok: false, error: 'invalid terminal size' };
        request.tty = tty;
      }
      for (const field of ['user', 'workdir'] as const) {
        const v = value[field];
        if (v === undefined) continue;
        if (!isString(v) || v.length > 4096 || v.includes('\0')) return { ok: false, error: `malformed exec request: ${field} must be a string` };
        request[field] = v;
      }
      if (value.keep !== undefined) {
        if (!isObject(value.keep) || !validKeptTag(value.keep.tag)) return { ok: false, error: 'malformed exec request: keep.tag must be a string of at most 4096 bytes' };
        request.keep = { tag: value.keep.tag };
      }
      if (value.container !== undefined) {
        // A podman container name (the shim uses containerd's ids).
        if (!isString(value.container) || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(value.container)) return { ok: false, error: 'malformed exec request: container must be a container name' };
        if (value.vm === true) return { ok: false, error: 'malformed exec request: container is for container commands, not vm' };
        request.container = value.container;
      }
      return { ok: true, value: request };
    }
    case 'kept-list':
      return { ok: true, value: { kind: 'kept-list' } };
    case 'kept-attach':
      if (typeof value.id !== 'number' || !Number.isSafeInteger(value.id) || value.id < 0) return { ok: false, error: 'malformed kept-attach request: id must be a whole number' };
      return { ok: true, value: { kind: 'kept-attach', id: value.id } };
    case 'snapshot':
      if (!isString(value.dir)) return { ok: false, error: 'malformed snapshot request: dir must be a string' };
      return { ok: true, value: { kind: 'snapshot', dir: value.dir } };
    case 'files': {
      const op = FILES_OPS.find((o) => o === value.op);
      if (!op || !isString(value.path) || value.path.length > MAX_PATH_LENGTH) return { ok: false, error: 'malformed files request' };
      if (value.to !== undefined && (!isString(value.to) || value.to.length > MAX_PATH_LENGTH)) return { ok: false, error: 'malformed files request: to must be a path' };
      const request: FilesControlRequest = { kind: 'files', op, path: value.path };
      if (isString(value.to)) request.to = value.to;
      if (value.recursive !== undefined && typeof value.recursive !== 'boolean') return { ok: false, error: 'malformed files request: recursive must be a boolean' };
      if (value.recursive === true) request.recursive = true;
      return { ok: true, value: request };
    }
    case 'stop':
      if (value.timeoutSeconds === undefined) return { ok: true, value: { kind: 'stop' } };
      if (typeof value.timeoutSeconds !== 'number' || !Number.isInteger(value.timeoutSeconds) || value.timeoutSeconds < 0 || value.timeoutSeconds > 86_400) {
        return { ok: false, error: 'malformed stop request: timeoutSeconds must be whole seconds' };
      }
      return { ok: true, value: { kind: 'stop', timeoutSeconds: value.timeoutSeconds } };
    default:
      return { ok: false, error: `unknown request ${String(value.kind)}` };
  }
}

/** The CLI's side: a supervisor's message, or undefined when it is not one of ControlEvent. */
export function parseControlEvent(value: unknown): ControlEvent | undefined {
  if (!isObject(value)) return undefined;
  switch (value.type) {
    case 'progress':
    case 'error':
      return isString(value.message) ? { type: value.type, message: value.message } : undefined;
    case 'running':
      return isString(value.name) && isString(value.id) ? { type: 'running', name: value.name, id: value.id } : undefined;
    case 'exit': {
      const code = value.code ?? null;
      const signal = value.signal ?? null;
      if (code !== null && !(typeof code === 'number' && Number.isInteger(code))) return undefined;
      if (signal !== null && !isString(signal)) return undefined;
      return { type: 'exit', code, signal };
    }
    case 'result':
      if (value.vmSpec === undefined && value.config === undefined) return { type: 'result' };
      return parseSnapshotResult(value);
    default:
      return undefined;
  }
}

/**
 * Shape checks of what the manifest is built from (the supervisor wrote it from its own record,
 * and the restore re-validates the spec when it boots from it): the fields every reader uses.
 */
function isVmSpec(v: unknown): v is VmSpec {
  return isObject(v) && isString(v.id) && isString(v.kernel) && (v.initrd === undefined || isString(v.initrd)) && isString(v.cmdline) && Array.isArray(v.drives) && typeof v.cpus === 'number' && typeof v.memoryMiB === 'number';
}

function isVmConfig(v: unknown): v is VmConfig {
  return isObject(v) && isString(v.name) && isString(v.image) && isStringArray(v.command) && isStringRecord(v.env) && typeof v.cpus === 'number' && typeof v.memoryMiB === 'number';
}

function parseSnapshotResult(value: Record<string, unknown>): SnapshotResult | undefined {
  const { vmSpec, config, loadedImage, timings, parent } = value;
  if (!isVmSpec(vmSpec) || !isVmConfig(config)) return undefined;
  if (loadedImage !== null && !isString(loadedImage)) return undefined;
  if (!isObject(timings) || typeof timings.pausedMs !== 'number' || typeof timings.totalMs !== 'number') return undefined;
  let lineage: SnapshotRef | null = null;
  if (parent !== undefined && parent !== null) {
    if (!isObject(parent) || !isString(parent.tag) || (parent.id !== undefined && !isString(parent.id))) return undefined;
    lineage = { tag: parent.tag, ...(isString(parent.id) ? { id: parent.id } : {}) };
  }
  return { type: 'result', vmSpec, config, loadedImage, parent: lineage, timings: { pausedMs: timings.pausedMs, totalMs: timings.totalMs } };
}

/** The supervisor's side: a message the CLI sent on an attach channel. */
export function parseClientMessage(value: unknown): ClientMessage | undefined {
  if (!isObject(value)) return undefined;
  if (value.type === 'signal') return isString(value.signal) ? { type: 'signal', signal: value.signal } : undefined;
  if (value.type === 'resize') {
    const size = terminalSizeOf(value);
    return size ? { type: 'resize', ...size } : undefined;
  }
  return undefined;
}
