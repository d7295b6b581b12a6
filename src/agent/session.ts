/**
 * One host session on the agent's stream: answers the host's HELLO (after the sync marker)
 * and serves the channels it opens. A new HELLO means a new host (first boot, a reconnect,
 * or a clone restored from a snapshot): every old channel is dropped, the clock is stepped
 * to the host's, and fresh host randomness is mixed into the kernel's pool. A clone's
 * recovery (src/agent/recovery.ts) runs only when the host says the VM was restored.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import type { Duplex } from 'node:stream';
import { FrameType } from '../protocol/frames';
import { GatedStream } from '../protocol/gate';
import type { AgentRequest, ExecRequest, GuestInfo, Hello } from '../protocol/messages';
import { Mux, type Channel } from '../protocol/mux';
import { attachPersistent, holdPersistentOutput, releasePersistentOutput, runExec } from './exec';
import { runFuseMount } from './fuse-mount';
import { attachKept, listKept } from './kept-processes';
import { runFiles } from './files';
import type { FilesRequest } from '../protocol/files';
import { applyHostState } from './recovery';

export const AGENT_VERSION = '1';

export function serveSession(stream: Duplex, log: (msg: string) => void, debug = false): Mux {
  // Writes go through a gate so a snapshot can quiesce the link (see the 'quiesce' request).
  const gate = new GatedStream(stream);
  const mux = new Mux(gate, {
    side: 'guest',
    startInSync: true,
    ...(debug ? { trace: (dir: string, ch: number, type: number, len: number) => log(`${dir} ch=${ch} type=${FrameType[type]} len=${len}`) } : {}),
  });
  let session = '';
  mux.on('hello', (hello: Hello & { resume?: boolean }) => {
    if (hello.session === session || (hello.resume === true && session)) {
      // A retransmitted HELLO of the session we serve, or the same host continuing after a
      // snapshot: confirm, and send what was held back while the link was quiesced.
      gate.release(true);
      mux.sendHello(FrameType.HelloAck, { session, agentVersion: AGENT_VERSION });
      releasePersistentOutput();
      return;
    }
    // A new host (first boot, a reconnect, or a clone restored from a snapshot): what was held
    // back belongs to the previous host; channels are dropped (persistent ones keep running).
    // The link is in step (this HELLO came after a sync marker): drop the channels only. A
    // resync here would swallow the new host's first frames, which follow the HELLO_ACK at once.
    const previous = session;
    if (previous) mux.dropChannels();
    gate.release(false);
    session = hello.session;
    // Synchronous (no process is started), so the HELLO_ACK, which makes a clone count as
    // running, follows a finished recovery. Only the host knows whether this VM was just
    // restored: a new session is also a boot, or the same host reconnecting after a snapshot.
    applyHostState(hello, log, { clone: hello.restored === true });
    mux.sendHello(FrameType.HelloAck, { session, agentVersion: AGENT_VERSION });
  });
  mux.on('open', (channel: Channel) => {
    if (debug) log(`open ${channel.id} ${JSON.stringify(channel.request).slice(0, 200)}`);
    if (channel.request.kind === 'quiesce') {
      // Before a snapshot: answer, then send nothing more until the next HELLO, so no frame is
      // half-sent when the VM is paused. The same host resumes (HELLO with resume: true) and
      // gets the held frames; a clone's new host starts a new session and they are dropped.
      channel.setDataHandler(() => undefined);
      channel.send({ type: 'result' });
      channel.close();
      gate.hold();
      // The main container's output waits outside the gate: a host that comes back on a new
      // connection (Firecracker cuts the link at a snapshot) still gets it.
      holdPersistentOutput();
      if (debug) log('link quiesced');
      return;
    }
    handleRequest(channel.request as unknown as AgentRequest, channel, log);
  });
  return mux;
}

function handleRequest(request: AgentRequest | FilesRequest, channel: Channel, log: (msg: string) => void): void {
  switch (request.kind) {
    case 'exec':
      runExec(request as ExecRequest, channel);
      return;
    case 'info':
      channel.setDataHandler(() => undefined);
      channel.send({ type: 'result', info: guestInfo() });
      channel.close();
      return;
    case 'kept-list':
      listKept(channel);
      return;
    case 'kept-attach':
      attachKept(request, channel);
      return;
    case 'attach-persistent':
      attachPersistent(channel);
      return;
    case 'fuse-mount':
      runFuseMount(request, channel, log);
      return;
    case 'files':
      runFiles(request, channel);
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
