/**
 * One host session on the agent's stream: answers the host's HELLO (after the sync marker)
 * and serves the channels it opens. A new HELLO means a new host (first boot, a reconnect,
 * or a clone restored from a snapshot): every old channel is dropped, the clock is stepped
 * to the host's, and fresh host randomness is mixed into the kernel's pool.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import type { Duplex } from 'node:stream';
import { FrameType } from '../protocol/frames';
import type { AgentRequest, ExecRequest, GuestInfo, Hello } from '../protocol/messages';
import { Mux, type Channel } from '../protocol/mux';
import { runExec } from './exec';

export const AGENT_VERSION = '1';

export function serveSession(stream: Duplex, log: (msg: string) => void, debug = false): Mux {
  const mux = new Mux(stream, {
    side: 'guest',
    startInSync: true,
    ...(debug ? { trace: (dir: string, ch: number, type: number, len: number) => log(`${dir} ch=${ch} type=${FrameType[type]} len=${len}`) } : {}),
  });
  let session = '';
  mux.on('hello', (hello: Hello) => {
    if (hello.session === session) {
      // A retransmitted HELLO of the session we already serve: just confirm again.
      mux.sendHello(FrameType.HelloAck, { session, agentVersion: AGENT_VERSION });
      return;
    }
    if (session) mux.reset();
    session = hello.session;
    applyHostState(hello, log);
    mux.sendHello(FrameType.HelloAck, { session, agentVersion: AGENT_VERSION });
  });
  mux.on('open', (channel: Channel) => {
    if (debug) log(`open ${channel.id} ${JSON.stringify(channel.request).slice(0, 200)}`);
    handleRequest(channel.request as unknown as AgentRequest, channel, log);
  });
  return mux;
}

function handleRequest(request: AgentRequest, channel: Channel, log: (msg: string) => void): void {
  switch (request.kind) {
    case 'exec':
      runExec(request as ExecRequest, channel);
      return;
    case 'info':
      channel.setDataHandler(() => undefined);
      channel.send({ type: 'result', info: guestInfo() });
      channel.close();
      return;
    case 'poweroff':
      channel.setDataHandler(() => undefined);
      log('poweroff requested by host');
      channel.send({ type: 'result' });
      channel.close();
      powerOff();
      return;
    default:
      channel.send({ type: 'error', message: `unknown request kind ${(request as { kind?: unknown }).kind}` });
      channel.close();
  }
}

function guestInfo(): GuestInfo {
  const meminfo = fs.readFileSync('/proc/meminfo', 'utf8');
  const memTotalKiB = Number(/MemTotal:\s+(\d+)/.exec(meminfo)?.[1] ?? 0);
  return {
    memTotalKiB,
    cpus: os.cpus().length,
    uptimeSeconds: os.uptime(),
    kernel: os.release(),
    hostname: os.hostname(),
  };
}

function applyHostState(hello: Hello, log: (msg: string) => void): void {
  // Mixing bytes into /dev/urandom needs no privilege beyond the open; it does not credit entropy
  // but makes the output of every clone diverge from its siblings.
  if (typeof hello.seed === 'string' && hello.seed.length > 0) {
    try {
      fs.writeFileSync('/dev/urandom', Buffer.from(hello.seed, 'hex'));
    } catch (err) {
      log(`seeding /dev/urandom failed: ${(err as Error).message}`);
    }
  }
  // Step the clock when it is off by more than a second (a restored snapshot lives in the past).
  if (typeof hello.timeMs === 'number' && Math.abs(Date.now() - hello.timeMs) > 1000) {
    execFile('date', ['-u', '-s', `@${(hello.timeMs / 1000).toFixed(3)}`], (err) => {
      if (err) log(`setting the clock failed: ${err.message}`);
    });
  }
}

function powerOff(): void {
  // Flush the scratch disk, then power off at once: there is no init system to ask. Firecracker
  // has no ACPI power-off, so there the guest reboots instead (reboot=k ends the VMM).
  const reboot = fs.readFileSync('/proc/cmdline', 'utf8').includes('shoal.poweroff=reboot');
  execFile('sync', () => {
    try {
      fs.writeFileSync('/proc/sysrq-trigger', reboot ? 'b' : 'o');
    } catch {
      process.exit(0);
    }
  });
}
