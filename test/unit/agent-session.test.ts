/**
 * The agent's session (src/agent/session.ts) against the host's (src/host/agent-session.ts) over
 * an in-memory link whose host end is swapped, as when a clone of a snapshot gets a new host:
 * the new host's first exec, sent right after the HELLO_ACK, must be served. (It was not: the
 * agent resynced its decoder on the new HELLO and dropped the frames after it; only a slow
 * recovery, during which the host retransmits its HELLO, hid that.)
 *
 * A HELLO that says the VM was restored makes the agent run a clone's recovery (neighbour flush,
 * SOCK_DESTROY, host name), so this runs in a child in network and UTS namespaces of its own
 * (`unshare`). On vsock (Firecracker) every connection is a fresh agent session: there, the
 * source's own reconnect after a snapshot must not recover, and a clone's first connection must.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';

const root = process.getuid?.() === 0;
const src = path.resolve(__dirname, '../../src');

const SCRIPT = `
  const { Duplex } = require('node:stream');
  const { serveSession } = require(${JSON.stringify(path.join(src, 'agent/session.js'))});
  const { openAgentSession } = require(${JSON.stringify(path.join(src, 'host/agent-session.js'))});
  const { execCollect } = require(${JSON.stringify(path.join(src, 'host/exec-client.js'))});
  let hostEnd = null;
  const guest = new Duplex({ read() {}, write(chunk, _e, cb) { hostEnd?.push(chunk); cb(); } });
  const log = [];
  serveSession(guest, (m) => log.push(m));
  const vm = { connectAgent: async () => (hostEnd = new Duplex({ read() {}, write(chunk, _e, cb) { guest.push(chunk); cb(); } })) };
  const within = (p, what) => Promise.race([p, new Promise((_, r) => setTimeout(() => r(new Error(what + ' got no answer')), 5000))]);
  (async () => {
    const out = [];
    for (const name of ['source', 'clone-1', 'clone-2']) {
      hostEnd = null; // the previous host is gone
      const mux = await openAgentSession(vm, 5000, name === 'source' ? {} : { hostname: name, restored: true });
      const r = await within(execCollect(mux, { argv: ['sh', '-c', 'hostname; exit 3'] }), name + "'s first exec");
      out.push([name, r.code, r.stdout.toString()]);
    }
    return { out, log };
  })().then((r) => { process.stdout.write(JSON.stringify(r)); process.exit(0); },
    (e) => { process.stdout.write(JSON.stringify({ thrown: e.message })); process.exit(0); });`;

test('a new host\'s first exec, right after the HELLO_ACK, is served (a clone\'s first exec)', { skip: root ? false : 'needs root (namespaces)' }, () => {
  const r = spawnSync('unshare', ['--net', '--uts', '--', 'sh', '-c', 'hostname source && exec "$0" -e "$1"', process.execPath, SCRIPT], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), {
    out: [['source', 3, 'source\n'], ['clone-1', 3, 'clone-1\n'], ['clone-2', 3, 'clone-2\n']],
    log: [],
  });
});

/** vsock: a fresh serveSession per connection, as src/agent/main.ts serves each accepted one. */
const VSOCK_SCRIPT = `
  const { Duplex } = require('node:stream');
  const { serveSession } = require(${JSON.stringify(path.join(src, 'agent/session.js'))});
  const { openAgentSession } = require(${JSON.stringify(path.join(src, 'host/agent-session.js'))});
  const { execCollect } = require(${JSON.stringify(path.join(src, 'host/exec-client.js'))});
  const log = [];
  const vm = { connectAgent: async () => {
    let hostEnd = null;
    const guest = new Duplex({ read() {}, write(chunk, _e, cb) { hostEnd.push(chunk); cb(); } });
    hostEnd = new Duplex({ read() {}, write(chunk, _e, cb) { guest.push(chunk); cb(); } });
    serveSession(guest, (m) => log.push(m));
    return hostEnd;
  } };
  (async () => {
    const out = [];
    const steps = [['boot', {}], ['reconnect', {}], ['clone', { hostname: 'clone-v', restored: true }], ['reconnect-after-clone', {}]];
    for (const [name, identity] of steps) {
      const mux = await openAgentSession(vm, 5000, identity);
      const r = await execCollect(mux, { argv: ['hostname'] });
      out.push([name, r.stdout.toString()]);
    }
    return { out, log };
  })().then((r) => { process.stdout.write(JSON.stringify(r)); process.exit(0); },
    (e) => { process.stdout.write(JSON.stringify({ thrown: e.message })); process.exit(0); });`;

test('vsock: the same host reconnecting after a snapshot gets no clone recovery; a restored VM\'s first connection does', { skip: root ? false : 'needs root (namespaces)' }, () => {
  const r = spawnSync('unshare', ['--net', '--uts', '--', 'sh', '-c', 'hostname source && exec "$0" -e "$1"', process.execPath, VSOCK_SCRIPT], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), {
    out: [['boot', 'source\n'], ['reconnect', 'source\n'], ['clone', 'clone-v\n'], ['reconnect-after-clone', 'clone-v\n']],
    log: [],
  });
});

/**
 * The main container across a Firecracker snapshot: the link is quiesced, the vsock transport is
 * reset (the old connection dies), the host connects afresh and takes the container over
 * (attach-persistent). What it wrote in between must reach the new follower, in order.
 */
const PERSISTENT_SCRIPT = `
  const { Duplex } = require('node:stream');
  const { serveSession } = require(${JSON.stringify(path.join(src, 'agent/session.js'))});
  const { openAgentSession } = require(${JSON.stringify(path.join(src, 'host/agent-session.js'))});
  const { request } = require(${JSON.stringify(path.join(src, 'host/exec-client.js'))});
  const connections = [];
  const vm = { connectAgent: async () => {
    let hostEnd = null;
    // Delivered on a later turn, as a socket would: a reply must not arrive inside the write that asked.
    const guest = new Duplex({ read() {}, write(chunk, _e, cb) { setImmediate(() => hostEnd.push(chunk)); cb(); } });
    hostEnd = new Duplex({ read() {}, write(chunk, _e, cb) { setImmediate(() => guest.push(chunk)); cb(); } });
    serveSession(guest, () => undefined).on('close', () => guest.destroy());
    connections.push(guest);
    return hostEnd;
  } };
  const follow = (channel) => new Promise((resolve) => {
    let out = '';
    channel.setDataHandler((stream, data) => { if (stream === 1) out += data.toString(); });
    channel.on('message', (m) => { if (m.type === 'exit') resolve({ out, code: m.code }); });
    channel.on('close', () => resolve({ out, code: 'closed' }));
  });
  (async () => {
    const first = await openAgentSession(vm, 5000, {});
    const main = first.open({ kind: 'exec', argv: ['sh', '-c', 'echo before; read go; echo during-1; echo during-2; sleep 0.5; echo after'], stdin: true, persistent: true });
    let seen = '';
    main.setDataHandler((stream, data) => { if (stream === 1) seen += data.toString(); });
    while (!seen.includes('before')) await new Promise((r) => setTimeout(r, 20));
    await request(first, { kind: 'quiesce' });
    // Quiesced: the container writes (the host's own writes still flow to it).
    await main.write(0, Buffer.from('go\\n'));
    await new Promise((r) => setTimeout(r, 300));
    connections[0].destroy(); // Firecracker's reset: the old connection is gone
    const second = await openAgentSession(vm, 5000, {});
    const result = await follow(second.open({ kind: 'attach-persistent' }));
    return { firstSaw: seen, ...result };
  })().then((r) => { process.stdout.write(JSON.stringify(r)); process.exit(0); },
    (e) => { process.stdout.write(JSON.stringify({ thrown: e.message })); process.exit(0); });`;

test('vsock: what the main container writes between the quiesce and a new session\'s attach reaches the new follower, in order', () => {
  const r = spawnSync(process.execPath, ['-e', PERSISTENT_SCRIPT], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { firstSaw: 'before\n', out: 'during-1\nduring-2\nafter\n', code: 0 });
});

/**
 * The host goes away while the main container's output is blocked on its credit window, part of
 * a chunk sent: the next follower must get that chunk again (a partial repeat), never lose its
 * rest. Here the first host reads everything that reaches it but its credit stops reaching the
 * guest (a link that is dying), so what the follower gets must join what the first host got
 * with no gap.
 */
const MID_WRITE_SCRIPT = `
  const { Duplex } = require('node:stream');
  const { serveSession } = require(${JSON.stringify(path.join(src, 'agent/session.js'))});
  const { openAgentSession } = require(${JSON.stringify(path.join(src, 'host/agent-session.js'))});
  const connections = [];
  let creditsLost = false;
  const vm = { connectAgent: async () => {
    let hostEnd = null;
    const isFirst = connections.length === 0;
    const guest = new Duplex({ read() {}, write(chunk, _e, cb) { setImmediate(() => hostEnd.push(chunk)); cb(); } });
    hostEnd = new Duplex({ read() {}, write(chunk, _e, cb) { if (!(isFirst && creditsLost)) setImmediate(() => guest.push(chunk)); cb(); } });
    serveSession(guest, () => undefined).on('close', () => guest.destroy());
    connections.push(guest);
    return hostEnd;
  } };
  (async () => {
    const first = await openAgentSession(vm, 5000, {});
    // ~1.9 MB of numbered lines: more than the 1 MiB window the first host never credits back.
    const main = first.open({ kind: 'exec', argv: ['sh', '-c', 'seq 0 239999 | sed "s/$/ ......./"; echo END'], persistent: true });
    let firstSaw = '';
    main.setDataHandler((stream, data) => { if (stream === 1) firstSaw += data.toString(); if (firstSaw.length > 200000) creditsLost = true; });
    // Until the credit stops (on a loaded host the output may take a while to get there), then
    // long enough for the agent to use up its window and block mid-chunk.
    for (let waited = 0; !creditsLost && waited < 20000; waited += 50) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 1000));
    connections[0].destroy();
    const second = await openAgentSession(vm, 5000, {});
    const follower = second.open({ kind: 'attach-persistent' });
    const result = await new Promise((resolve) => {
      let out = '';
      follower.setDataHandler((stream, data) => { if (stream === 1) out += data.toString(); });
      follower.on('message', (m) => { if (m.type === 'exit') resolve({ out, code: m.code }); });
      follower.on('close', () => resolve({ out, code: 'closed' }));
    });
    // No byte lost: the follower's output is the stream's tail from at or before where the first
    // host's part ended (a repeat of what the first host got of the blocked chunk is allowed).
    let full = '';
    for (let i = 0; i < 240000; i++) full += i + ' .......\\n';
    full += 'END\\n';
    return { firstBytes: firstSaw.length, code: result.code, firstIsPrefix: full.startsWith(firstSaw), followerIsTail: full.endsWith(result.out), gap: Math.max(0, (full.length - firstSaw.length) - result.out.length) };
  })().then((r) => { process.stdout.write(JSON.stringify(r)); process.exit(0); },
    (e) => { process.stdout.write(JSON.stringify({ thrown: e.message })); process.exit(0); });`;

test('vsock: a host lost mid-write leaves the main container\'s blocked chunk to the next follower, whole', () => {
  const r = spawnSync(process.execPath, ['-e', MID_WRITE_SCRIPT], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, r.stderr);
  const result = JSON.parse(r.stdout) as { firstBytes: number; code: number; firstIsPrefix: boolean; followerIsTail: boolean; gap: number };
  assert.ok(result.firstBytes > 200000 && result.firstBytes < 1_900_000, `the first host got ${result.firstBytes} bytes`);
  assert.deepEqual({ code: result.code, firstIsPrefix: result.firstIsPrefix, followerIsTail: result.followerIsTail, gap: result.gap }, { code: 0, firstIsPrefix: true, followerIsTail: true, gap: 0 });
});
