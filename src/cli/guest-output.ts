/**
 * Running one short container-side command from the CLI (podman inspect, ...) and collecting its
 * output, bounded: the guest is not trusted to keep its answers small.
 */
import { Writable } from 'node:stream';
import type { SupervisorClient } from '../control/client';
import type { ExecControlRequest } from '../control/messages';
import { attachChannel } from '../host/exec-client';
import { ShoalError } from '../util/errors';

export const MAX_COLLECTED_BYTES = 8 << 20;

class BoundedSink extends Writable {
  readonly chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly what: string) {
    super();
  }
  override _write(chunk: Buffer, _encoding: BufferEncoding, done: (error?: Error | null) => void): void {
    this.size += chunk.length;
    if (this.size > MAX_COLLECTED_BYTES) {
      done(new ShoalError(`the guest's ${this.what} is larger than ${MAX_COLLECTED_BYTES} bytes`));
      return;
    }
    this.chunks.push(Buffer.from(chunk));
    done();
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

export async function collectExec(client: SupervisorClient, request: Omit<ExecControlRequest, 'kind'>): Promise<{ code: number; stdout: string; stderr: string }> {
  const stdout = new BoundedSink('output');
  const stderr = new BoundedSink('error output');
  let failure: Error | undefined;
  for (const sink of [stdout, stderr]) sink.on('error', (err) => { failure = err; });
  const code = await attachChannel(client.exec(request), { stdout, stderr });
  if (failure) throw failure;
  return { code, stdout: stdout.text(), stderr: stderr.text() };
}
