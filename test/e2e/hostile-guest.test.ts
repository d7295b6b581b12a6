/**
 * A hostile guest against its root supervisor, from inside a real guest: a root process stops the
 * agent, takes its end of the virtio-serial link (pidfd_getfd, through perl's syscall(): the
 * rootfs has perl, and the port can be open only once) and sends an attack. For each attack:
 * the supervisor's memory stays within a fixed bound, it records the VM as failed with the
 * protocol error as the reason, powers it off and exits (never a crash), a bystander VM carries
 * on, and `rm -f` leaves nothing (no process, no record, no /dev/shm file).
 *
 * Attacks that break the protocol end their VM (docs/security.md); a flood of well-formed data
 * on the host's existing channels is consumed at the host's pace (into the capped container log)
 * and the VM stays running (its own agent link may not survive it). Each attack gets a
 * fresh VM, restored from the image cache (a few seconds under TCG), beside the one bystander
 * booted once.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MEMORY_FILE_DIR } from '../../src/state/vm-files';
import { busyboxImageForFile } from '../helpers/images';
import { walkTree } from '../helpers/tree-walk';
import { ShoalSandbox, waitUntil } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('hostile');
const image = busyboxImageForFile();
after(() => sandbox.cleanup());

/** The supervisor's resident memory may not grow past this, whatever the guest sends. */
const RSS_BOUND_KIB = 300 * 1024;

/**
 * The attacker, run detached in the guest as root. It finds the agent, stops it, takes its
 * descriptor of the port, re-syncs the host at a frame boundary with a valid HELLO_ACK (so the
 * attack is judged on its own), then sends the attack and keeps sending for a while.
 */
const ATTACKER = String.raw`
use strict; use warnings;
$SIG{PIPE} = 'IGNORE';
my $kind = shift @ARGV;
my $agent;
opendir(my $d, '/proc') or die "proc: $!";
for my $p (grep { /^\d+$/ } readdir $d) {
  open(my $f, '<', "/proc/$p/cmdline") or next;
  local $/; my $c = <$f>; close $f;
  # The agent is node running agent/main.js (tini, PID 1, has it in its argv too).
  if (defined $c && $c =~ m{^(?:[^\0]*/)?node\0[^\0]*agent/main\.js}) { $agent = $p; last; }
}
die "no agent\n" unless $agent;
my $target;
opendir(my $fdd, "/proc/$agent/fd") or die "fds: $!";
for my $n (grep { /^\d+$/ } readdir $fdd) {
  my $l = readlink("/proc/$agent/fd/$n") // '';
  if ($l =~ m{^/dev/vport}) { $target = $n; last; }
}
die "no port descriptor\n" unless defined $target;
kill 'STOP', $agent;
my $pidfd = syscall(434, $agent + 0, 0);       # pidfd_open
die "pidfd_open: $!\n" if $pidfd < 0;
my $fd = syscall(438, $pidfd, $target + 0, 0);  # pidfd_getfd
die "pidfd_getfd: $!\n" if $fd < 0;
open(my $port, '+<&=', $fd) or die "fdopen: $!\n";
binmode $port;
my $marker = "\x00\xffSHOAL-SYNC\x00\xff\x5a\xa5";
sub frame { my ($ch, $type, $payload) = @_; return pack('NNC', length($payload), $ch, $type) . $payload; }
sub put { my $b = shift; my $off = 0; while ($off < length $b) { my $n = syswrite($port, $b, length($b) - $off, $off); return 0 unless defined $n; $off += $n; } return 1; }
my $ack = '{"session":"attacker","agentVersion":"1"}';
put($marker . frame(0, 8, $ack));
print "attacking: $kind\n";
my $deadline = time + 15;
my $sent = 0;
if ($kind eq 'random') {
  open(my $r, '<', '/dev/urandom') or die;
  while (time < $deadline && $sent < 64 * 1048576) { my $buf; read($r, $buf, 65536); put($buf) or last; $sent += 65536; }
} elsif ($kind eq 'short-credit') {
  put(join '', map { frame($_, 4, "\x01\x02") } 1 .. 400);
} elsif ($kind eq 'null-json') {
  put(join '', map { frame($_, 5, 'null') } 1 .. 400);
} elsif ($kind eq 'guest-open-flood') {
  my $ch = 0x80000001;
  put(frame($ch, 1, '{"kind":"exec","argv":["x"]}'));
  my $data = frame($ch, 2, "\x01" . ('A' x 65535));
  while (time < $deadline && $sent < 256 * 1048576) { put($data x 16) or last; $sent += 16 * 65536; }
} elsif ($kind eq 'channel-flood') {
  my $data = join '', map { frame($_, 2, "\x01" . ('B' x 65535)) } 1 .. 64;
  while (time < $deadline && $sent < 256 * 1048576) { put($data) or last; $sent += 64 * 65536; }
} elsif ($kind eq 'huge-length') {
  put(pack('NNC', 0x7fffffff, 1, 2) . ('C' x 65536));
  my $more = 'D' x 65536;
  while (time < $deadline && $sent < 64 * 1048576) { put($more) or last; $sent += 65536; }
}
print "sent $sent\n";
# Give the agent its link back: for an attack the host survives, the VM carries on.
kill 'CONT', $agent;
`;

function statusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  try {
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The victims' log cap (SHOAL_LOG_MAX_BYTES), small so the flood visibly hits it. */
const LOG_CAP = 1024 * 1024;

function processesOf(id: string): number[] {
  return sandbox.processes().filter((pid) => {
    try {
      return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(id);
    } catch {
      return false;
    }
  });
}

async function startVm(name: string, env: Record<string, string> = {}): Promise<{ supervisorPid: number; id: string }> {
  const run = await sandbox.run(['run', '-d', '--name', name, image.ref, '--', 'sleep', '3600'], { timeoutMs: 240_000, env });
  assert.equal(run.code, 0, run.stderr.toString());
  const vm = await sandbox.vm(name);
  assert.equal(vm?.state, 'running');
  return { supervisorPid: vm!.pid!, id: vm!.id };
}

async function exec(name: string, argv: string[], input?: string): Promise<string> {
  const result = await sandbox.run(['exec', '--vm', ...(input === undefined ? [] : ['-i']), name, '--', ...argv], { timeoutMs: 60_000, ...(input === undefined ? {} : { input }) });
  assert.equal(result.code, 0, `exec ${argv.join(' ')}: ${result.stderr.toString()}`);
  return result.stdout.toString();
}

describe('a hostile guest', () => {
  let bystander: { supervisorPid: number; id: string };

  before(async () => {
    bystander = await startVm('bystander');
  });

  const attacks: Array<{ kind: string; outcome: 'ends' | 'stays running' }> = [
    { kind: 'random', outcome: 'ends' },
    { kind: 'short-credit', outcome: 'ends' },
    { kind: 'null-json', outcome: 'ends' },
    { kind: 'guest-open-flood', outcome: 'ends' },
    { kind: 'huge-length', outcome: 'ends' },
    { kind: 'channel-flood', outcome: 'stays running' },
  ];
  for (const [i, { kind, outcome }] of attacks.entries()) {
    test(`${kind}: the VM ${outcome}, the supervisor stays bounded and never crashes, the bystander carries on, rm -f leaves nothing`, async () => {
      const name = `victim${i}`;
      const victim = await startVm(name, { SHOAL_LOG_MAX_BYTES: String(LOG_CAP) });
      await exec(name, ['sh', '-c', 'cat > /tmp/attack.pl'], ATTACKER);
      const baseline = statusKiB(victim.supervisorPid, 'VmRSS')!;
      // Detached, so this exec finishes before the agent is stopped.
      await exec(name, ['sh', '-c', `setsid sh -c 'sleep 1; exec perl /tmp/attack.pl ${kind}' </dev/null >/tmp/attack.log 2>&1 &`]);
      let peak = baseline;
      const sample = (): boolean => {
        const rss = statusKiB(victim.supervisorPid, 'VmHWM');
        if (rss === undefined) return true;
        peak = Math.max(peak, rss);
        return false;
      };
      let detail: string;
      if (outcome === 'ends') {
        await waitUntil(`the supervisor of ${name} to end`, 90_000, sample);
        const vm = await sandbox.vm(name);
        assert.equal(vm?.state, 'failed', JSON.stringify(vm));
        assert.match(vm?.error ?? '', /the guest broke the agent protocol \(.+\); the VM was stopped/);
        assert.ok(!fs.existsSync(`${MEMORY_FILE_DIR}/shoal-${victim.id}.ram`), 'guest RAM released');
        assert.deepEqual(processesOf(victim.id), []);
        detail = vm!.error!;
      } else {
        const sampler = setInterval(sample, 100);
        // The attacker floods for 15 s; then the host has absorbed what it got.
        await new Promise((r) => setTimeout(r, 20_000));
        clearInterval(sampler);
        sample();
        // Well-formed data within the host's credit is not a violation on the host: the VM is
        // still running (its agent link may be gone: the agent then sees credit for bytes it never
        // sent and resyncs; a guest's root may break its own VM), and what the flood left is only
        // the capped container log.
        const vm = await sandbox.vm(name);
        assert.equal(vm?.state, 'running', JSON.stringify(vm));
        assert.ok(statusKiB(victim.supervisorPid, 'VmRSS') !== undefined, 'the supervisor is alive');
        const logs = path.join(sandbox.stateDir, 'vms', victim.id);
        assert.ok(fs.existsSync(path.join(logs, 'container.log.1')), 'the flood went past the log cap and was rotated');
        const kept = ['container.log', 'container.log.1'].reduce((sum, f) => sum + (fs.existsSync(path.join(logs, f)) ? fs.statSync(path.join(logs, f)).size : 0), 0);
        assert.ok(kept <= 2 * LOG_CAP + 256 * 1024, `container logs keep ${kept} bytes`);
        detail = `the flood was absorbed; logs keep ${Math.round(kept / 1024)} KiB`;
      }
      assert.ok(peak < RSS_BOUND_KIB, `${kind}: supervisor peak RSS ${peak} KiB (baseline ${baseline} KiB)`);
      // The bystander is untouched.
      assert.equal(statusKiB(bystander.supervisorPid, 'VmRSS') !== undefined, true, 'bystander supervisor alive');
      assert.equal((await exec('bystander', ['echo', 'still here'])).trim(), 'still here');
      const rm = await sandbox.run(['rm', '-f', name], { timeoutMs: 60_000 });
      assert.equal(rm.code, 0, rm.stderr.toString());
      assert.deepEqual(sandbox.leftovers().filter((f) => f.includes(victim.id) || f.startsWith(`names/${name}`)), []);
      assert.deepEqual(processesOf(victim.id), []);
      assert.ok(!fs.existsSync(`${MEMORY_FILE_DIR}/shoal-${victim.id}.ram`));
      console.log(`# ${kind}: supervisor peak RSS ${Math.round(peak / 1024)} MiB (baseline ${Math.round(baseline / 1024)} MiB); ${detail}`);
    });
  }

  test('rm -f of everything leaves nothing', async () => {
    const rm = await sandbox.run(['rm', '-f', 'bystander'], { timeoutMs: 60_000 });
    assert.equal(rm.code, 0, rm.stderr.toString());
    assert.deepEqual(sandbox.leftovers(), []);
    assert.deepEqual(sandbox.processes(), []);
    assert.ok(!fs.existsSync(`${MEMORY_FILE_DIR}/shoal-${bystander.id}.ram`));
  });
});

/** Every `.shoal-cp-*` staging directory under `parent`, with its mode when seen. */
function stagingModes(parent: string, seen: Map<string, number>): void {
  let names: string[];
  try {
    names = fs.readdirSync(parent);
  } catch {
    return;
  }
  for (const name of names.filter((n) => n.startsWith('.shoal-cp-'))) {
    try {
      const mode = fs.lstatSync(path.join(parent, name)).mode & 0o7777;
      seen.set(`${name} ${mode.toString(8)}`, mode);
    } catch {
      // removed meanwhile
    }
  }
}

describe('a hostile guest through cp and --map', () => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-hostile-cp-'));
  after(() => fs.rmSync(work, { recursive: true, force: true }));

  test('cp out of a --privileged container: no device, FIFO or set-id bit reaches the host; the data does; the staging directory is never reachable by others', async () => {
    const run = await sandbox.run(['run', '-d', '--privileged', '--name', 'cpout', image.ref, '--', 'sleep', '3600'], { timeoutMs: 240_000 });
    assert.equal(run.code, 0, run.stderr.toString());
    const made = await sandbox.run(['exec', 'cpout', '--', 'sh', '-c', [
      'set -e; mkdir -p /dir/open; cd /dir',
      'busybox mknod null c 1 3; busybox mknod sda b 8 0; busybox mkfifo fifo',
      'echo data > data; echo "#!/bin/sh" > suid; chmod 4755 suid; chmod 0777 open; chmod 2777 /dir/open',
      // Big enough that the transfer takes a while, so the staging directory is seen during it.
      'dd if=/dev/zero of=big bs=1M count=48 2>/dev/null; ls -la /dir',
    ].join('\n')], { timeoutMs: 120_000 });
    assert.equal(made.code, 0, made.stderr.toString());
    assert.match(made.stdout.toString(), /^c.* null$/m, 'the container made a character device');
    const parent = path.join(work, 'out');
    fs.mkdirSync(parent, { mode: 0o755 });
    fs.chmodSync(parent, 0o755);
    const seen = new Map<string, number>();
    const watcher = setInterval(() => stagingModes(parent, seen), 2);
    const cp = await sandbox.run(['cp', 'cpout:/dir', path.join(parent, 'dir')], { timeoutMs: 240_000 });
    clearInterval(watcher);
    assert.equal(cp.code, 0, cp.stderr.toString());
    const stderr = cp.stderr.toString();
    for (const what of ['dir/null: a character device', 'dir/sda: a block device', 'dir/fifo: a FIFO']) assert.ok(stderr.includes(what), `stderr names ${what}: ${stderr}`);
    const tree = walkTree(path.join(parent, 'dir'));
    for (const { rel, st } of tree) {
      assert.ok(st.isFile() || st.isDirectory() || st.isSymbolicLink(), `${rel} is mode ${st.mode.toString(8)} on the host`);
      assert.equal(st.mode & 0o6000, 0, `${rel} has a set-id bit: ${(st.mode & 0o7777).toString(8)}`);
    }
    assert.deepEqual(tree.map((e) => e.rel).sort(), ['', 'big', 'data', 'open', 'suid']);
    assert.equal(fs.readFileSync(path.join(parent, 'dir', 'data'), 'utf8'), 'data\n');
    assert.equal(fs.statSync(path.join(parent, 'dir', 'big')).size, 48 * 1024 * 1024);
    assert.equal(fs.statSync(path.join(parent, 'dir', 'suid')).mode & 0o7777, 0o755);
    assert.equal(fs.statSync(path.join(parent, 'dir', 'open')).mode & 0o777, 0o777, 'a member keeps its mode');
    assert.ok(seen.size > 0, 'the staging directory was seen during the copy');
    for (const [what, mode] of seen) assert.equal(mode & 0o077, 0, `staging directory ${what}`);
    assert.deepEqual(fs.readdirSync(parent).filter((n) => n.startsWith('.shoal-cp-')), [], 'no staging directory left');
    console.log(`# cp out: staging seen as ${[...seen.keys()].join(', ')}`);
    const rm = await sandbox.run(['rm', '-f', 'cpout'], { timeoutMs: 60_000 });
    assert.equal(rm.code, 0, rm.stderr.toString());
  });

  test('a --map guest that opens files and never closes them gets EMFILE at the cap; the supervisor keeps answering and stays bounded', async () => {
    const mapped = path.join(work, 'mapped');
    fs.mkdirSync(mapped);
    fs.writeFileSync(path.join(mapped, 'f'), 'f');
    const run = await sandbox.run(['run', '-d', '--name', 'fdflood', '--map', `${mapped}:/m`, image.ref, '--', 'sleep', '3600'], { timeoutMs: 240_000 });
    assert.equal(run.code, 0, run.stderr.toString());
    const vm = await sandbox.vm('fdflood');
    const supervisor = vm!.pid!;
    const fds = (): number => fs.readdirSync(`/proc/${supervisor}/fd`).length;
    const baselineFds = fds();
    const baselineRss = statusKiB(supervisor, 'VmRSS')!;
    // In the VM (the map is at /run/shoal/maps/0 there): open until an error or 25,000 opens,
    // check a file outside the map still opens (so the EMFILE is the host's cap, not the guest's
    // own limit), write the result, and hold every descriptor for a while.
    const flood = String.raw`
      const fs = require('fs'); const held = []; let error = null;
      for (let i = 0; i < 25000; i++) { try { held.push(fs.openSync('/run/shoal/maps/0/f', 'r')); } catch (e) { error = e.code; break; } }
      let local = 'ok'; try { fs.closeSync(fs.openSync('/etc/hostname', 'r')); } catch (e) { local = e.code; }
      fs.writeFileSync('/tmp/flood.json', JSON.stringify({ opened: held.length, error, local }));
      setTimeout(() => {}, 120000);`;
    await exec('fdflood', ['sh', '-c', `setsid node -e "$1" </dev/null >/tmp/flood.log 2>&1 &`, 'sh', flood]);
    let peakRss = baselineRss;
    let peakFds = baselineFds;
    let result: { opened: number; error: string | null; local: string } | undefined;
    await waitUntil('the guest to finish opening', 180_000, async () => {
      peakRss = Math.max(peakRss, statusKiB(supervisor, 'VmHWM') ?? 0);
      peakFds = Math.max(peakFds, fds());
      const out = await sandbox.run(['exec', '--vm', 'fdflood', '--', 'cat', '/tmp/flood.json'], { timeoutMs: 30_000 });
      if (out.code === 0 && out.stdout.length > 0) result = JSON.parse(out.stdout.toString()) as typeof result;
      return result !== undefined;
    });
    assert.equal(result!.error, 'EMFILE', JSON.stringify(result));
    assert.ok(result!.opened <= 1024 && result!.opened >= 1000, `the guest held ${result!.opened} descriptors`);
    assert.equal(result!.local, 'ok', 'the guest itself was not out of descriptors');
    // While the guest holds them: the supervisor answers, and holds no more than the cap.
    peakFds = Math.max(peakFds, fds());
    assert.ok(peakFds - baselineFds <= 1024 + 16, `supervisor descriptors ${baselineFds} -> ${peakFds}`);
    assert.equal((await exec('fdflood', ['echo', 'still here'])).trim(), 'still here');
    assert.equal((await sandbox.vm('fdflood'))?.state, 'running');
    peakRss = Math.max(peakRss, statusKiB(supervisor, 'VmHWM') ?? 0);
    assert.ok(peakRss < RSS_BOUND_KIB, `supervisor peak RSS ${peakRss} KiB`);
    console.log(`# --map fd flood: guest opened ${result!.opened} then ${result!.error}; supervisor fds ${baselineFds} -> ${peakFds}, peak RSS ${Math.round(peakRss / 1024)} MiB`);
    const rm = await sandbox.run(['rm', '-f', 'fdflood'], { timeoutMs: 60_000 });
    assert.equal(rm.code, 0, rm.stderr.toString());
  });
});
