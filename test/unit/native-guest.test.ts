/**
 * The native addon's guest-recovery side (what a clone's agent does without starting a process):
 * clock_settime, RNDADDENTROPY/RNDRESEEDCRNG, neighbour flush, SOCK_DESTROY, and a link's new
 * MAC, address and default route; plus the agent's use of them (src/agent/recovery.ts).
 *
 * Everything that changes the network or the host name runs in a child process inside network
 * and UTS namespaces of its own (`unshare --net --uts`), which vanish with it. CLOCK_REALTIME
 * has no namespace (time namespaces cover only the monotonic and boot clocks), so the clock is
 * never set here: the tests check the argument guards and that the call reaches clock_settime,
 * which refuses it in a child without CAP_SYS_TIME. The real step is asserted in a guest by the
 * e2e snapshot tests.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { describe, it } from 'node:test';
import * as N from '../../src/native/index';

const root = process.getuid?.() === 0;
const needsRoot = root ? false : 'needs root (namespaces, capabilities)';
const nativeModule = path.resolve(__dirname, '../../src/native/index.js');
const agentDir = path.resolve(__dirname, '../../src/agent');

/**
 * Runs `body` (JS source; `N` is the native wrapper, `sh(cmd)` runs a shell line and returns its
 * output) in a child under `prefix` (e.g. unshare) and returns what it printed as JSON.
 */
function inChild(prefix: string[], body: string): unknown {
  const script = `
    const N = require(${JSON.stringify(nativeModule)});
    const { execSync } = require('node:child_process');
    const sh = (cmd) => execSync(cmd, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    (async () => { ${body} })().then((r) => process.stdout.write(JSON.stringify(r ?? null)),
      (e) => { process.stdout.write(JSON.stringify({ thrown: e.message, code: e.code, syscall: e.syscall })); });`;
  const r = spawnSync(prefix[0]!, [...prefix.slice(1), process.execPath, '-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, `child failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const NETNS = ['unshare', '--net', '--uts', '--'];
/** A veth pair v0/v1, both up, in the child's namespace. */
const VETH = "sh('ip link set lo up; ip link add v0 type veth peer name v1; ip link set v0 up; ip link set v1 up');";
/** Capability names for setpriv; CapEff bits from /proc/self/status. */
function withoutCapability(cap: string): string[] {
  return ['setpriv', `--inh-caps=-${cap}`, `--bounding-set=-${cap}`, '--'];
}
const CAP_SYS_ADMIN = 21;
const CAP_SYS_TIME = 25;
/** JS that throws unless the child really lacks the capability (so nothing is ever changed). */
function assertLacks(bit: number): string {
  return `const eff = BigInt('0x' + require('node:fs').readFileSync('/proc/self/status', 'utf8').match(/CapEff:\\s*(\\w+)/)[1]);
    if ((eff >> ${bit}n) & 1n) throw new Error('capability ${bit} still effective: refusing to run');`;
}

describe('clockSetRealtime', () => {
  it('refuses times no host clock would send, before any syscall', () => {
    for (const bad of [NaN, Infinity, -1, 0, 1e3, 946684799999, 7258118400001]) {
      assert.throws(() => N.clockSetRealtime(bad), RangeError, String(bad));
    }
    assert.throws(() => N.clockSetRealtime('1700000000000' as unknown as number), TypeError);
  });

  it('reaches clock_settime, which refuses it without CAP_SYS_TIME', { skip: needsRoot }, () => {
    const r = inChild(withoutCapability('sys_time'), `${assertLacks(CAP_SYS_TIME)} N.clockSetRealtime(Date.now());`);
    assert.deepEqual(r, { thrown: 'clock_settime failed: Operation not permitted', code: 'EPERM', syscall: 'clock_settime' });
  });
});

describe('randomAddEntropy', () => {
  it('credits bytes and reseeds the crng (CAP_SYS_ADMIN)', { skip: needsRoot }, () => {
    // Host randomness into the host's own pool: harmless, and the real ioctls run.
    assert.doesNotThrow(() => N.randomAddEntropy(crypto.randomBytes(64), { reseed: true }));
    assert.doesNotThrow(() => N.randomAddEntropy(crypto.randomBytes(1), { reseed: false, device: '/dev/random' }));
  });

  it('is refused without CAP_SYS_ADMIN, with the ioctl named', { skip: needsRoot }, () => {
    const r = inChild(withoutCapability('sys_admin'), `${assertLacks(CAP_SYS_ADMIN)} N.randomAddEntropy(Buffer.alloc(16, 7), { reseed: true });`);
    assert.deepEqual(r, { thrown: 'ioctl(RNDADDENTROPY) failed: Operation not permitted', code: 'EPERM', syscall: 'ioctl(RNDADDENTROPY)' });
  });

  it('bounds its input and names a bad device', () => {
    assert.throws(() => N.randomAddEntropy(Buffer.alloc(0), { reseed: true }), RangeError);
    assert.throws(() => N.randomAddEntropy(Buffer.alloc(1025), { reseed: true }), RangeError);
    assert.throws(() => N.randomAddEntropy('abc' as unknown as Buffer, { reseed: true }), TypeError);
    assert.throws(() => N.randomAddEntropy(Buffer.alloc(8), { reseed: true, device: '/nonexistent/random' }), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
    // Not a random device: the ioctl fails, it is not mistaken for success.
    assert.throws(() => N.randomAddEntropy(Buffer.alloc(8), { reseed: true, device: '/dev/null' }), (e: NodeJS.ErrnoException) => e.syscall === 'ioctl(RNDADDENTROPY)');
  });
});

describe('neighFlush', () => {
  it('deletes learned IPv4 and IPv6 neighbours, keeps permanent ones', { skip: needsRoot }, () => {
    const r = inChild(NETNS, `${VETH}
      sh('ip addr add 10.9.0.1/24 dev v0');
      sh('ip neigh add 10.9.0.2 lladdr 02:00:00:00:00:02 dev v0 nud stale');
      sh('ip neigh add 10.9.0.3 lladdr 02:00:00:00:00:03 dev v0 nud reachable');
      sh('ip neigh add 10.9.0.4 lladdr 02:00:00:00:00:04 dev v0 nud permanent');
      sh('ip -6 neigh add fe80::2 lladdr 02:00:00:00:00:02 dev v0 nud stale');
      const before = sh('ip neigh show dev v0');
      const flushed = N.neighFlush();
      return { before, flushed, after: sh('ip neigh show dev v0'), again: N.neighFlush() };`) as Record<string, unknown>;
    assert.match(String(r.before), /10\.9\.0\.2 .*STALE/);
    assert.equal(r.flushed, 3);
    assert.equal(String(r.after).trim(), '10.9.0.4 lladdr 02:00:00:00:00:04 PERMANENT');
    assert.equal(r.again, 0);
  });
});

describe('tcpDestroyEstablished', () => {
  it('aborts established TCP connections over IPv4 and IPv6, not listeners', { skip: needsRoot }, () => {
    const r = inChild(NETNS, `
      sh('ip link set lo up');
      const net = require('node:net');
      const servers = [], accepted = [], clients = [], events = [];
      for (const host of ['127.0.0.1', '::1']) {
        const server = net.createServer((s) => { accepted.push(s); s.on('error', (e) => events.push('server ' + e.code)); });
        await new Promise((r) => server.listen(0, host, r));
        servers.push(server);
        const c = net.connect(server.address().port, host);
        c.on('error', (e) => events.push('client ' + e.code));
        await new Promise((r) => c.once('connect', r));
        clients.push(c);
      }
      while (accepted.length < 2) await new Promise((r) => setTimeout(r, 10));
      const established = sh('ss -Htn state established').trim().split('\\n').length;
      const destroyed = N.tcpDestroyEstablished();
      await Promise.all(clients.map((c) => new Promise((r) => c.closed ? r() : c.once('close', r))));
      const left = sh('ss -Htn state established').trim();
      // The listeners still take new connections.
      const again = net.connect(servers[0].address().port, '127.0.0.1');
      await new Promise((r, j) => { again.once('connect', r); again.once('error', j); });
      again.destroy();
      for (const s of [...accepted]) s.destroy();
      for (const s of servers) s.close();
      return { established, destroyed, left, events: events.filter((e) => e.startsWith('client')).sort() };`) as Record<string, unknown>;
    assert.equal(r.established, 4, `two connections, both ends in this namespace: ${JSON.stringify(r)}`);
    // Aborting one end resets its local peer, which is then gone before its turn (not counted).
    assert.ok(Number(r.destroyed) >= 2 && Number(r.destroyed) <= 4, JSON.stringify(r));
    assert.equal(r.left, '');
    // Each client was aborted itself (ECONNABORTED) or reset by its aborted peer (ECONNRESET),
    // whichever end the dump listed first.
    assert.equal((r.events as string[]).length, 2, JSON.stringify(r));
    for (const e of r.events as string[]) assert.match(e, /^client (ECONNABORTED|ECONNRESET)$/);
  });
});

describe('link, address and route', () => {
  it('sets a MAC, flushes and adds IPv4 addresses, replaces the default route', { skip: needsRoot }, () => {
    const r = inChild(NETNS, `${VETH}
      const out = {};
      N.linkSetMac('v0', '02:fc:0a:0b:0c:0d');
      out.mac = JSON.parse(sh('ip -j link show v0'))[0].address;
      N.ipv4AddrAdd('v0', '10.77.0.9/24');
      N.ipv4AddrAdd('v0', '10.77.0.10/24');
      sh('ip addr add 192.168.5.5/16 dev v0');
      sh('ip -6 addr add fd00::5/64 dev v0 nodad');
      N.ipv4DefaultRoute('v0', '10.77.0.1');
      out.route1 = sh('ip route show default').trim();
      out.flushed = N.ipv4AddrFlush('v0');
      out.v4after = sh('ip -4 -o addr show dev v0').trim();
      out.v6after = sh('ip -6 -o addr show dev v0 scope global').includes('fd00::5/64');
      out.routeAfterFlush = sh('ip route show default').trim();
      N.ipv4AddrAdd('v0', '10.78.0.9/24');
      N.ipv4DefaultRoute('v0', '10.78.0.1');
      N.ipv4DefaultRoute('v0', '10.78.0.254');
      out.v4 = sh('ip -4 -o addr show dev v0').trim().replace(/\\s+/g, ' ');
      out.route2 = sh('ip route show default').trim();
      try { N.ipv4AddrAdd('v0', '10.78.0.9/24'); } catch (e) { out.dup = e.code; }
      try { N.linkSetMac('nosuch0', '02:00:00:00:00:01'); } catch (e) { out.nodev = e.code; }
      try { N.ipv4DefaultRoute('v0', '10.99.0.1'); } catch (e) { out.unreachable = e.code; }
      return out;`) as Record<string, unknown>;
    assert.equal(r.mac, '02:fc:0a:0b:0c:0d', JSON.stringify(r));
    assert.equal(r.route1, 'default via 10.77.0.1 dev v0');
    assert.ok(Number(r.flushed) >= 2, `flushed ${String(r.flushed)}`); // secondaries may go with their primary
    assert.equal(r.v4after, '');
    assert.equal(r.v6after, true, 'IPv6 addresses are kept');
    assert.equal(r.routeAfterFlush, '', 'the old default route went with its address');
    assert.match(String(r.v4), /inet 10\.78\.0\.9\/24 /);
    assert.equal(r.route2, 'default via 10.78.0.254 dev v0', 'replaced, not added');
    assert.equal(r.dup, 'EEXIST');
    assert.equal(r.nodev, 'ENODEV');
    assert.equal(r.unreachable, 'ENETUNREACH');
  });

  it('refuses bad names, MACs and addresses before any syscall', () => {
    assert.throws(() => N.linkSetMac('v0', '02:fc:0a:0b:0c'), RangeError);
    assert.throws(() => N.linkSetMac('v0', '02:fc:0a:0b:0c:0d; reboot'), RangeError);
    assert.throws(() => N.linkSetMac('x'.repeat(16), '02:fc:0a:0b:0c:0d'), RangeError);
    assert.throws(() => N.ipv4AddrAdd('v0', '10.0.0.1'), RangeError);
    assert.throws(() => N.ipv4AddrAdd('v0', '10.0.0.1/33'), RangeError);
    assert.throws(() => N.ipv4AddrAdd('v0', '300.0.0.1/24'), RangeError);
    assert.throws(() => N.ipv4DefaultRoute('v0', 'fe80::1'), RangeError);
    assert.throws(() => N.ipv4AddrFlush(''), RangeError);
  });
});

describe('the agent\'s recovery (src/agent/recovery.ts)', () => {
  const recover = (hello: string, extra = ''): Record<string, unknown> => inChild(NETNS, `${VETH}
    const { applyHostState } = require(${JSON.stringify(path.join(agentDir, 'recovery.js'))});
    const log = []; ${extra}
    const before = require('node:os').hostname();
    const t0 = process.hrtime.bigint();
    applyHostState(${hello}, (m) => log.push(m), { clone: true });
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    return { before, hostname: require('node:os').hostname(), log, ms,
      neigh: sh('ip neigh show dev v0').trim(), addr: sh('ip -4 -o addr show dev v0').trim().replace(/\\s+/g, ' '),
      route: sh('ip route show default').trim(), mac: JSON.parse(sh('ip -j link show v0'))[0].address };`) as Record<string, unknown>;

  it('a clone takes its host name, forgets its neighbours and reseeds, without a process', { skip: needsRoot }, () => {
    const r = recover(`{ session: 's', timeMs: Date.now(), seed: '${crypto.randomBytes(64).toString('hex')}', hostname: 'clone-7' }`,
      "sh('ip addr add 10.9.0.1/24 dev v0; ip neigh add 10.9.0.2 lladdr 02:00:00:00:00:02 dev v0 nud stale'); const cp = require('node:child_process'); const real = cp.ChildProcess.prototype.spawn; cp.ChildProcess.prototype.spawn = function (o) { log.push('spawned ' + o.file); return real.call(this, o); };");
    assert.deepEqual(r.log, [], JSON.stringify(r));
    assert.equal(r.hostname, 'clone-7');
    assert.equal(r.neigh, '');
  });

  it('a bridged clone moves eth0 (here v0) to its own MAC, address and route', { skip: needsRoot }, () => {
    // takeNetworkIdentity is what forgetSourceNetworkState runs on eth0; the namespace has none.
    const r = inChild(NETNS, `${VETH}
      sh('ip addr add 10.77.0.5/24 dev v0; ip route add default via 10.77.0.1');
      const { takeNetworkIdentity } = require(${JSON.stringify(path.join(agentDir, 'network-identity.js'))});
      takeNetworkIdentity({ mac: '02:fc:01:02:03:04', address: '10.77.0.9/24', gateway: '10.77.0.1' }, 'v0');
      return { addr: sh('ip -4 -o addr show dev v0').trim().replace(/\\s+/g, ' '), route: sh('ip route show default').trim(),
        mac: JSON.parse(sh('ip -j link show v0'))[0].address };`) as Record<string, unknown>;
    assert.equal(r.mac, '02:fc:01:02:03:04', JSON.stringify(r));
    assert.match(String(r.addr), /inet 10\.77\.0\.9\/24 /);
    assert.doesNotMatch(String(r.addr), /10\.77\.0\.5/);
    assert.equal(r.route, 'default via 10.77.0.1 dev v0');
  });

  it('refuses a hostile host name and network identity, and logs each failed step', { skip: needsRoot }, () => {
    const r = recover(`{ session: 's', timeMs: Date.now(), seed: 'zz', hostname: 'a;reboot', network: { mac: '02:fc:01:02:03:04; reboot', address: '10.77.0.9/24', gateway: '10.77.0.1' } }`);
    assert.equal(r.hostname, r.before, JSON.stringify(r));
    assert.equal((r.log as string[]).length, 2, JSON.stringify(r.log));
    assert.match((r.log as string[])[0]!, /refusing the host name "a;reboot"/);
    assert.match((r.log as string[])[1]!, /taking the clone's network identity failed: refusing a network identity/);
  });
});
