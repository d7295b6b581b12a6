/**
 * Kept processes: execs the guest agent records in its own table (src/agent/kept-processes.ts)
 * so that a host that comes later (a restarted `shoal serve`, the host of a VM resumed from a
 * pause, a fork's child) can list them and attach to them, with their recent output replayed.
 * The table lives in the agent's memory, so a VM snapshot carries it with the processes.
 *
 * Shared by the host and the agent (Node built-ins only). The host parses the agent's list here,
 * as anything from the guest: bounded in count and size, shapes checked.
 */

/** What an exec asks to be kept with: an opaque label the host owns (its API, its id, its command). */
export interface KeepOptions {
  tag: string;
}

/** The longest tag, in bytes: the whole list must fit one frame (MAX_PAYLOAD). */
export const MAX_KEPT_TAG_BYTES = 4096;

/** The agent's bounds: live kept processes (one more is refused), ended ones remembered, ring bytes per stream. */
export const KEPT_LIMITS = { maxLive: 128, maxEnded: 64, ringBytesPerStream: 64 * 1024 } as const;

/** The most entries a list may hold (what the host accepts; the agent never sends more). */
export const MAX_KEPT_LIST = KEPT_LIMITS.maxLive + KEPT_LIMITS.maxEnded;

/** List the kept processes: answered by one { type: 'result', processes: KeptProcessInfo[] }. */
export interface KeptListRequest {
  kind: 'kept-list';
}

/**
 * Follow a kept process from now on: its recent output (the ring) is replayed on streams 1 and
 * 2, then live output; stdin (stream 0), 'signal' and 'resize' as on an exec channel; 'exit'
 * once it ended (at once after the replay when it already has).
 */
export interface KeptAttachRequest {
  kind: 'kept-attach';
  id: number;
}

export interface KeptProcessInfo {
  /** The agent's number for it, never reused in this VM's life (nor in its clones'). */
  id: number;
  /** Its process id in the guest (crun's, for an exec into the container). */
  pid: number;
  tag: string;
  tty: boolean;
  stdin: boolean;
  running: boolean;
  code: number | null;
  signal: string | null;
  /** Guest wall clock, ms. */
  startedAt: number;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** A tag the agent takes: a string of at most MAX_KEPT_TAG_BYTES bytes. */
export function validKeptTag(tag: unknown): tag is string {
  return typeof tag === 'string' && tag.length <= MAX_KEPT_TAG_BYTES && Buffer.byteLength(tag) <= MAX_KEPT_TAG_BYTES;
}

/** One entry of the agent's list, or undefined when it is not a sane one. */
export function parseKeptInfo(value: unknown): KeptProcessInfo | undefined {
  if (!isObject(value)) return undefined;
  const { id, pid, tag, tty, stdin, running, code, signal, startedAt } = value;
  if (!isCount(id) || !isCount(pid) || !validKeptTag(tag) || !isCount(startedAt)) return undefined;
  if (typeof tty !== 'boolean' || typeof stdin !== 'boolean' || typeof running !== 'boolean') return undefined;
  if (code !== null && !(typeof code === 'number' && Number.isInteger(code) && code >= -1 && code <= 65_535)) return undefined;
  if (signal !== null && !(typeof signal === 'string' && /^SIG[A-Z0-9+-]{1,12}$/.test(signal))) return undefined;
  return { id, pid, tag, tty, stdin, running, code, signal, startedAt };
}

/**
 * The agent's answer to kept-list: its entries, the malformed ones left out, at most
 * MAX_KEPT_LIST. undefined when the message is not a list at all.
 */
export function parseKeptList(message: unknown): KeptProcessInfo[] | undefined {
  if (!isObject(message) || message.type !== 'result' || !Array.isArray(message.processes)) return undefined;
  const out: KeptProcessInfo[] = [];
  for (const entry of message.processes.slice(0, MAX_KEPT_LIST)) {
    const info = parseKeptInfo(entry);
    if (info && !out.some((o) => o.id === info.id)) out.push(info);
  }
  return out;
}
