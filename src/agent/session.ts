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
import { GatedStream } from '../protocol/gate';
import type { AgentRequest, ExecRequest, GuestInfo, Hello } from '../protocol/messages';
import { Mux, type Channel } from '../protocol/mux';
import { attachPersistent, runExec } from './exec';
import { runFuseMount } from './fuse-mount';
import { runFiles } from './files';
import type { FilesRequest } from '../protocol/files';
import { forgetSourceNetworkState } from './network-identity';

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
  /** Set while a new session is being set up (reseeding), so retransmitted HELLOs wait. */
  let starting = false;
  mux.on('hello', (hello: Hello & { resume?: boolean }) => {
    if (starting) return;
    if (hello.session === session || (hello.resume === true && session)) {
      // A retransmitted HELLO of the session we serve, or the same host continuing after a
      // snapshot: confirm, and send what was held back while the link was quiesced.
      gate.release(true);
      mux.sendHello(FrameType.HelloAck, { session, agentVersion: AGENT_VERSION });
      return;
    }
    // A new host (first boot, a reconnect, or a clone restored from a snapshot): what was held
    // back belongs to the previous host; channels are dropped (persistent ones keep running).
    const previous = session;
    if (previous) mux.reset();
    gate.release(false);
    session = hello.session;
    starting = true;
    void applyHostState(hello, log, previous !== '').finally(() => {
      starting = false;
      mux.sendHello(FrameType.HelloAck, { session, agentVersion: AGENT_VERSION });
    });
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


async function applyHostState(hello: Hello, log: (msg: string) => void, reseed: boolean): Promise<void> {
  // Step the clock when it is off by more than a second (a restored snapshot lives in the past).
  if (typeof hello.timeMs === 'number' && Math.abs(Date.now() - hello.timeMs) > 1000) {
    execFile('date', ['-u', '-s', `@${(hello.timeMs / 1000).toFixed(3)}`], (err) => {
      if (err) log(`setting the clock failed: ${err.message}`);
    });
  }
  if (reseed) await forgetSourceNetworkState(log, hello.network);
  if (typeof hello.seed !== 'string' || hello.seed.length === 0) return;
  if (!reseed) {
    // First session after boot: mixing bytes into /dev/urandom needs no privilege beyond the
    // open; it does not credit entropy but keeps boots apart.
    try {
      fs.writeFileSync('/dev/urandom', Buffer.from(hello.seed, 'hex'));
    } catch (err) {
      log(`seeding /dev/urandom failed: ${(err as Error).message}`);
    }
    return;
  }
  // A later session may be a clone of a snapshot, whose crng state is a copy of its siblings'.
  // Writing to /dev/urandom only mixes into the input pool (6.1 reseeds the crng on its own
  // schedule), so add the host's bytes with RNDADDENTROPY and force RNDRESEEDCRNG at once.
  // Node has no ioctl; perl (perl-base, in every Debian rootfs) does.
  await new Promise<void>((resolve) => {
    execFile('perl', ['-e', RESEED_PERL, hello.seed], { timeout: 20_000 }, (err, _out, stderr) => {
      if (err) {
        log(`reseeding the crng failed: ${String(stderr).trim() || err.message}`);
        try {
          fs.writeFileSync('/dev/urandom', Buffer.from(hello.seed, 'hex'));
        } catch {
          // nothing more to try
        }
      }
      resolve();
    });
  });
}

/** RNDADDENTROPY = _IOW('R', 3, int[2]) = 0x40085203; RNDRESEEDCRNG = _IO('R', 7) = 0x5207. */
const RESEED_PERL = [
  'open(my $f, ">", "/dev/urandom") or die "open: $!";',
  'my $b = pack("H*", $ARGV[0]);',
  'ioctl($f, 0x40085203, pack("ii", 8 * length($b), length($b)) . $b) or die "RNDADDENTROPY: $!";',
  'ioctl($f, 0x5207, 0) or die "RNDRESEEDCRNG: $!";',
].join(' ');

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
