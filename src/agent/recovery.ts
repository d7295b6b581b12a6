/**
 * What the agent does when a new host says hello: step the clock to the host's, mix the host's
 * randomness into the kernel's pool, and for a clone (a later session) also take its own
 * hostname and forget its source's network state. All of it runs in the agent's own process,
 * through the native addon and /proc: a process start costs tens of ms in an emulated guest,
 * and a clone counts as running only once this is done.
 */
import fs from 'node:fs';
import os from 'node:os';
import * as native from '../native/index';
import type { Hello } from '../protocol/messages';
import { attempt } from './attempt';
import { forgetSourceNetworkState } from './network-identity';

/** How far the guest clock may be off before it is stepped (a restored snapshot lives in the past). */
const CLOCK_SLACK_MS = 1000;
/** RFC 1123 host name, as `shoal run --name` allows; the kernel's limit is 64 bytes. */
const HOSTNAME = /^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,62})$/;

export interface RecoveryOptions {
  /** A later session: possibly a clone of a snapshot, sharing its source's crng state and network. */
  clone: boolean;
  /** Where the hostname is written (tests use a UTS namespace's own file). */
  hostnameFile?: string;
}

export function applyHostState(hello: Hello, log: (msg: string) => void, options: RecoveryOptions): void {
  if (typeof hello.timeMs === 'number' && Math.abs(Date.now() - hello.timeMs) > CLOCK_SLACK_MS) {
    attempt(log, 'setting the clock', () => native.clockSetRealtime(hello.timeMs));
  }
  if (options.clone && typeof hello.hostname === 'string') {
    const name = hello.hostname;
    if (!HOSTNAME.test(name)) log(`refusing the host name ${JSON.stringify(name.slice(0, 80))}`);
    else if (name !== os.hostname()) attempt(log, 'setting the host name', () => fs.writeFileSync(options.hostnameFile ?? '/proc/sys/kernel/hostname', name));
  }
  if (options.clone) forgetSourceNetworkState(log, hello.network);
  reseed(hello.seed, options.clone, log);
}

/**
 * The first session after boot only mixes the host's bytes in (a write to /dev/urandom, no
 * privilege needed) to keep boots apart. A later session may be a clone, whose crng state is a
 * copy of its siblings': a write would only reach the input pool (6.1 reseeds the crng on its
 * own schedule), so credit the bytes (RNDADDENTROPY) and reseed the crng at once (RNDRESEEDCRNG).
 */
function reseed(seedHex: unknown, clone: boolean, log: (msg: string) => void): void {
  if (typeof seedHex !== 'string' || !/^(?:[0-9a-f]{2}){1,1024}$/i.test(seedHex)) return;
  const seed = Buffer.from(seedHex, 'hex');
  if (clone && attempt(log, 'reseeding the crng', () => native.randomAddEntropy(seed, { reseed: true }))) return;
  attempt(log, 'seeding /dev/urandom', () => fs.writeFileSync('/dev/urandom', seed));
}
