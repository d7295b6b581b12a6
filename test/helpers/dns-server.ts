/**
 * A tiny authoritative DNS server for tests (RFC 1035 over UDP): answers A queries for the names
 * it is given, NXDOMAIN for other names, and an empty answer for other types of a known name.
 * Enough to show a guest's resolver reaching the host's; nothing leaves the host.
 */
import dgram from 'node:dgram';

export interface TestDnsServer {
  /** The names asked for, in order. */
  readonly queries: string[];
  close(): Promise<void>;
}

function readName(message: Buffer, offset: number): { name: string; next: number } {
  const labels: string[] = [];
  let at = offset;
  while (at < message.length && message[at] !== 0) {
    const length = message[at]!;
    labels.push(message.subarray(at + 1, at + 1 + length).toString('ascii'));
    at += 1 + length;
  }
  return { name: labels.join('.').toLowerCase(), next: at + 1 };
}

function answer(query: Buffer, records: Record<string, string>, queries: string[]): Buffer | undefined {
  if (query.length < 12) return undefined;
  const { name, next } = readName(query, 12);
  if (next + 4 > query.length) return undefined;
  queries.push(name);
  const type = query.readUInt16BE(next);
  const question = query.subarray(12, next + 4);
  const address = records[name];
  const header = Buffer.alloc(12);
  query.copy(header, 0, 0, 2); // id
  // QR, opcode 0, AA, RD copied, RA; RCODE 3 (NXDOMAIN) for unknown names.
  header.writeUInt16BE(0x8400 | (query.readUInt16BE(2) & 0x0100) | 0x0080 | (address ? 0 : 3), 2);
  header.writeUInt16BE(1, 4);
  const withAnswer = address !== undefined && type === 1;
  header.writeUInt16BE(withAnswer ? 1 : 0, 6);
  if (!withAnswer) return Buffer.concat([header, question]);
  const record = Buffer.alloc(16);
  record.writeUInt16BE(0xc00c, 0); // the name, by pointer to the question's
  record.writeUInt16BE(1, 2); // A
  record.writeUInt16BE(1, 4); // IN
  record.writeUInt32BE(60, 6); // TTL
  record.writeUInt16BE(4, 10);
  address.split('.').forEach((octet, i) => record.writeUInt8(Number(octet), 12 + i));
  return Buffer.concat([header, question, record]);
}

/** Serves `records` (name -> IPv4 address) on UDP port 53 of `address`. */
export function startDnsServer(address: string, records: Record<string, string>): Promise<TestDnsServer> {
  const socket = dgram.createSocket('udp4');
  const queries: string[] = [];
  socket.on('message', (message, peer) => {
    const reply = answer(message, records, queries);
    if (reply) socket.send(reply, peer.port, peer.address);
  });
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(53, address, () => {
      socket.off('error', reject);
      resolve({ queries, close: () => new Promise<void>((r) => socket.close(() => r())) });
    });
  });
}
