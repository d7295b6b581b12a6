/**
 * The main container's output, kept on the host for `shoal logs`: records of
 * stream:u8 length:u32be bytes, so stdout and stderr stay apart byte for byte.
 */
import fs from 'node:fs';

export class ContainerLogWriter {
  private readonly fd: number;

  constructor(file: string) {
    this.fd = fs.openSync(file, 'a');
  }

  append(stream: number, data: Buffer): void {
    const header = Buffer.allocUnsafe(5);
    header.writeUInt8(stream, 0);
    header.writeUInt32BE(data.length, 1);
    fs.writeSync(this.fd, Buffer.concat([header, data]));
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}

export function* readContainerLog(file: string): Generator<{ stream: number; data: Buffer }> {
  let content: Buffer;
  try {
    content = fs.readFileSync(file);
  } catch {
    return;
  }
  for (let offset = 0; offset + 5 <= content.length; ) {
    const stream = content.readUInt8(offset);
    const length = content.readUInt32BE(offset + 1);
    if (offset + 5 + length > content.length) return; // a record cut short by a crash
    yield { stream, data: content.subarray(offset + 5, offset + 5 + length) };
    offset += 5 + length;
  }
}
