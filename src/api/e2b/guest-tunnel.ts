/**
 * A byte stream to a TCP port inside a sandbox, with no host port taken: a small relay runs in
 * the guest OS (its Node, the one the agent runs on), connects to 127.0.0.1:PORT there (the
 * container shares the guest's network namespace) and pipes the connection to its stdin and
 * stdout, which travel over the exec channel the supervisor already relays. Flow control is
 * the channel's: a write resolves when the guest took it, and output is held until read.
 */
import { Duplex } from 'node:stream';
import type { Core, RemoteProcess } from '../core';

/** Exits 0 when the connection ends, 1 (message on stderr) when it cannot be made. */
const RELAY = [
  "const s=require('net').connect(Number(process.argv[1]),'127.0.0.1');",
  "s.on('error',(e)=>{process.stderr.write(String(e.code||e.message));process.exit(1)});",
  "s.on('close',()=>process.exit(0));",
  'process.stdin.pipe(s);s.pipe(process.stdout);',
].join('');

export async function openGuestTunnel(core: Core, vmId: string, port: number): Promise<Duplex> {
  const remote = await core.exec(vmId, { argv: ['node', '-e', RELAY, String(port)], env: {}, vm: true, stdin: true });
  return new GuestTunnel(remote);
}

class GuestTunnel extends Duplex {
  /** Resolves the guest's pending output handler once the reader wants more. */
  private wanted: (() => void) | undefined;

  constructor(private readonly remote: RemoteProcess) {
    super({ allowHalfOpen: true });
    remote.onOutput((stream, data) => {
      if (stream !== 'stdout') return undefined;
      if (this.push(data)) return undefined;
      return new Promise<void>((resolve) => { this.wanted = resolve; });
    });
    void remote.done.then((end) => {
      if ('error' in end || end.exitCode !== 0) this.destroy(new Error(`the connection in the sandbox failed${'error' in end ? `: ${end.error}` : ''}`));
      else this.push(null);
    });
  }

  override _read(): void {
    const wanted = this.wanted;
    this.wanted = undefined;
    wanted?.();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.remote.writeStdin(chunk).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.remote.endStdin();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.wanted?.();
    this.remote.close();
    callback(error);
  }
}
