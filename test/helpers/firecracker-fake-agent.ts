/**
 * A fake guest agent for the fake Firecracker (FAKE_FC_AGENT=fake): it speaks shoal's real
 * frame protocol (src/protocol) as the agent does in vsock mode (one session per accepted
 * connection, HELLO/HELLO_ACK, quiesce holding its writes, persistent main process followed by
 * attach-persistent), but runs NOTHING on the host: podman and the few shell commands the
 * supervisor sends are simulated, `poweroff` ends the fake VM as a Firecracker guest's reboot
 * does. Enough to run the real supervisor against the fake Firecracker.
 */
import { FrameType } from '../../src/protocol/frames';
import { GatedStream } from '../../src/protocol/gate';
import { Mux, STDIN, STDOUT, type Channel } from '../../src/protocol/mux';
import type { GuestListener } from './firecracker-vsock-peer';

interface Guest {
  /** The main container's current follower and its exit, once it ended. */
  mainFollower: Channel | undefined;
  mainExit: number | undefined;
}

export function fakeAgent(powerOff: () => void): GuestListener {
  const guest: Guest = { mainFollower: undefined, mainExit: undefined };
  const endMain = (code: number): void => {
    guest.mainExit = code;
    const f = guest.mainFollower;
    if (f && !f.closed) {
      f.send({ type: 'exit', code, signal: null });
      f.close();
    }
  };
  const follow = (channel: Channel): void => {
    guest.mainFollower = channel;
    channel.setDataHandler(() => undefined);
    if (guest.mainExit !== undefined) endMain(guest.mainExit);
  };
  const exit = (channel: Channel, code: number, stdout = ''): void => {
    void (async () => {
      if (stdout) await channel.write(STDOUT, Buffer.from(stdout));
      channel.end(STDOUT);
      channel.send({ type: 'exit', code, signal: null });
      channel.close();
    })();
  };
  const exec = (channel: Channel, argv: string[]): void => {
    const [cmd, sub] = argv;
    if (cmd === 'podman' && sub === 'load') {
      // Reads the archive to its end, as podman load does.
      channel.setDataHandler(() => undefined);
      channel.on('eof', (stream: number) => { if (stream === STDIN) exit(channel, 0, 'Loaded image: localhost/fake:latest\n'); });
      return;
    }
    channel.setDataHandler(() => undefined);
    if (cmd === 'podman' && sub === 'run') return follow(channel); // runs until `podman stop`
    if (cmd === 'podman' && sub === 'stop') {
      exit(channel, 0, 'main\n');
      endMain(143);
      return;
    }
    if (cmd === 'podman' && sub === 'wait') return exit(channel, 0, argv.includes('--condition') ? '' : `${guest.mainExit ?? 0}\n`);
    if (cmd === 'sh') return exit(channel, 0); // the hostname a clone sets: nothing to do here
    if (cmd === 'echo') return exit(channel, 0, `${argv.slice(1).join(' ')}\n`);
    exit(channel, 127);
  };
  return (socket) => {
    socket.on('error', () => undefined);
    const gate = new GatedStream(socket);
    const mux = new Mux(gate, { side: 'guest', startInSync: true });
    let session = '';
    mux.on('hello', (hello: { session: string; resume?: boolean }) => {
      if (hello.session === session || (hello.resume === true && session)) {
        gate.release(true);
      } else {
        if (session) mux.reset();
        gate.release(false);
        session = hello.session;
      }
      mux.sendHello(FrameType.HelloAck, { session, agentVersion: '1' });
    });
    mux.on('open', (channel: Channel) => {
      const req = channel.request;
      switch (req.kind) {
        case 'quiesce':
          channel.setDataHandler(() => undefined);
          channel.send({ type: 'result' });
          channel.close();
          gate.hold();
          return;
        case 'exec':
          exec(channel, Array.isArray(req.argv) ? req.argv.map(String) : []);
          return;
        case 'attach-persistent':
          follow(channel);
          return;
        case 'poweroff':
          channel.setDataHandler(() => undefined);
          channel.send({ type: 'result' });
          channel.close();
          setTimeout(powerOff, 20);
          return;
        default:
          channel.setDataHandler(() => undefined);
          channel.send({ type: 'error', message: `fake agent: ${String(req.kind)}` });
          channel.close();
      }
    });
  };
}
