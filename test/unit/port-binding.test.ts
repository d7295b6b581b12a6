/**
 * Bridged VMs bound to their MAC and address (src/network/port-binding.ts), on a real bridge with
 * real nftables rules, without a VM: network namespaces made here stand for the host (a bridge
 * with the gateway address, ports isolated as shoal0's are) and for two guests (a veth end each,
 * with the MAC and address "their VM" was given). Each attack is first shown to work with no
 * binding, so the test can fail, and then to be dropped once the ports are bound, while the
 * guests' own traffic still passes.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync, type ChildProcess } from 'node:child_process';
import { after, before, test } from 'node:test';
import { bindPort, bindScript, portOwner, unbindPort, type NftRunner, type PortBinding } from '../../src/network/port-binding';
import { spawnTied } from '../../src/util/process';

const root = process.getuid?.() === 0;
const skip = root ? false : 'needs root (creates network namespaces, veths, nftables rules)';

const GATEWAY = '10.77.0.1';
const A: PortBinding = { port: 'shoal-ta', mac: '02:fc:00:00:00:0a', address: '10.77.0.2', owner: 'aaaaaaaaaaaa' };
const B: PortBinding = { port: 'shoal-tb', mac: '02:fc:00:00:00:0b', address: '10.77.0.3', owner: 'bbbbbbbbbbbb' };
const TCP_PORT = 7777;

const holders: ChildProcess[] = [];
let host = 0;
let guestA = 0;
let guestB = 0;

/** A process holding a fresh network namespace (dies with this test process). */
async function namespaceHolder(): Promise<number> {
  const child = spawnTied('unshare', ['--net', '--', 'sh', '-c', 'ip link set lo up && echo ready && exec sleep infinity'], { stdio: ['ignore', 'pipe', 'inherit'] });
  holders.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`unshare exited ${code}`)));
  });
  return child.pid!;
}

function inNs(pid: number, command: string[]): string {
  return execFileSync('nsenter', [`--target=${pid}`, '--net', '--', ...command], { encoding: 'utf8' });
}

/** nft in the host namespace of the test, as bindPort/unbindPort run it. */
const nft: NftRunner = (args, input) =>
  new Promise((resolve, reject) => {
    const child = execFile('nsenter', [`--target=${host}`, '--net', '--', 'nft', ...args], (err, stdout, stderr) => (err ? reject(new Error(stderr || err.message)) : resolve(stdout)));
    child.stdin?.end(input ?? '');
  });

/** Can `pid`'s namespace open a TCP connection to the host's gateway address from `source`? */
function connects(pid: number, source: string): boolean {
  // Every probe starts from an empty neighbour cache on both sides, so each one ARPs afresh.
  inNs(host, ['ip', 'neigh', 'flush', 'dev', 'br0']);
  inNs(pid, ['ip', 'neigh', 'flush', 'dev', 'eth0']);
  const script = `const s=require('net').connect({host:'${GATEWAY}',port:${TCP_PORT},localAddress:'${source}'});` +
    `s.setTimeout(1500,()=>process.exit(2));s.on('data',d=>process.exit(String(d)==='ok'?0:3));s.on('error',()=>process.exit(4));`;
  try {
    inNs(pid, [process.execPath, '-e', script]);
    return true;
  } catch {
    return false;
  }
}

/** The MAC the host learned for `address` after asking for it (the ARP answer it believed), if any. */
function hostLearns(address: string): string | undefined {
  inNs(host, ['ip', 'neigh', 'flush', 'dev', 'br0']);
  const script = `const s=require('net').connect({host:'${address}',port:${TCP_PORT}});s.setTimeout(1500,()=>process.exit(0));s.on('error',()=>process.exit(0));s.on('connect',()=>process.exit(0));`;
  inNs(host, [process.execPath, '-e', script]);
  const line = inNs(host, ['ip', 'neigh', 'show', address, 'dev', 'br0']);
  return /lladdr ([0-9a-f:]{17})/.exec(line)?.[1];
}

function setMac(pid: number, mac: string): void {
  inNs(pid, ['ip', 'link', 'set', 'eth0', 'down']);
  inNs(pid, ['ip', 'link', 'set', 'eth0', 'address', mac]);
  inNs(pid, ['ip', 'link', 'set', 'eth0', 'up']);
}

before(async () => {
  if (!root) return;
  host = await namespaceHolder();
  guestA = await namespaceHolder();
  guestB = await namespaceHolder();
  inNs(host, ['ip', 'link', 'add', 'br0', 'type', 'bridge']);
  inNs(host, ['ip', 'addr', 'add', `${GATEWAY}/24`, 'dev', 'br0']);
  inNs(host, ['ip', 'link', 'set', 'br0', 'up']);
  for (const [guest, binding] of [[guestA, A], [guestB, B]] as const) {
    inNs(host, ['ip', 'link', 'add', binding.port, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', String(guest)]);
    inNs(host, ['ip', 'link', 'set', binding.port, 'master', 'br0', 'up']);
    inNs(host, ['ip', 'link', 'set', binding.port, 'type', 'bridge_slave', 'isolated', 'on']);
    setMac(guest, binding.mac);
    inNs(guest, ['ip', 'addr', 'add', `${binding.address}/24`, 'dev', 'eth0']);
  }
  // The host's service: answers "ok" to every connection.
  const server = spawnTied('nsenter', [`--target=${host}`, '--net', '--', process.execPath, '-e',
    `require('net').createServer(s=>s.end('ok')).listen(${TCP_PORT},'0.0.0.0',()=>console.log('ready'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
  holders.push(server);
  await new Promise<void>((resolve) => server.stdout!.once('data', () => resolve()));
});

after(() => {
  for (const child of holders) child.kill('SIGKILL');
});

test('the rule script is built only from checked values', () => {
  assert.match(bindScript(A), /ether saddr != 02:fc:00:00:00:0a drop comment "vm aaaaaaaaaaaa"/);
  assert.throws(() => bindScript({ ...A, port: 'x"; flush ruleset' }), /invalid bridge port name/);
  assert.throws(() => bindScript({ ...A, mac: '02:fc:00:00:00:0a drop' }), /invalid MAC/);
  assert.throws(() => bindScript({ ...A, address: '10.77.0.256' }), /invalid IPv4/);
  assert.throws(() => bindScript({ ...A, address: '10.77.0.2 accept' }), /invalid IPv4/);
  assert.throws(() => bindScript({ ...A, owner: 'a"b' }), /invalid VM id/);
});

test('unbound, a guest can use another\'s address and MAC and answer ARP for it (the attacks work)', { skip }, () => {
  assert.equal(connects(guestA, A.address), true);
  // A source address that is B's.
  inNs(guestA, ['ip', 'addr', 'add', `${B.address}/32`, 'dev', 'eth0']);
  assert.equal(connects(guestA, B.address), true);
  // B silent, A answers ARP for B's address: the host believes A.
  inNs(guestB, ['ip', 'link', 'set', 'eth0', 'down']);
  assert.equal(hostLearns(B.address), A.mac);
  inNs(guestB, ['ip', 'link', 'set', 'eth0', 'up']);
  inNs(guestA, ['ip', 'addr', 'del', `${B.address}/32`, 'dev', 'eth0']);
  // B's MAC as A's source.
  setMac(guestA, B.mac);
  assert.equal(connects(guestA, A.address), true);
  setMac(guestA, A.mac);
});

test('bound, each port passes its own MAC and address only: spoofed IP, MAC and ARP are dropped', { skip }, async () => {
  await bindPort(A, nft, 'shoal');
  await bindPort(B, nft, 'shoal');
  // Again (every VM start re-states the shared part): idempotent, one dispatch rule each.
  await bindPort(A, nft, 'shoal');
  const base = await nft(['list', 'chain', 'bridge', 'shoal', 'prerouting']);
  assert.equal(base.match(/iifname vmap @ports/g)?.length, 1, base);
  assert.equal(connects(guestA, A.address), true);
  assert.equal(connects(guestB, B.address), true);

  inNs(guestA, ['ip', 'addr', 'add', `${B.address}/32`, 'dev', 'eth0']);
  assert.equal(connects(guestA, B.address), false, 'a source address of another VM is dropped');
  inNs(guestB, ['ip', 'link', 'set', 'eth0', 'down']);
  assert.equal(hostLearns(B.address), undefined, 'an ARP answer for another VM\'s address is dropped');
  inNs(guestB, ['ip', 'link', 'set', 'eth0', 'up']);
  assert.equal(hostLearns(B.address), B.mac, 'the owner\'s own ARP answer passes');
  inNs(guestA, ['ip', 'addr', 'del', `${B.address}/32`, 'dev', 'eth0']);

  setMac(guestA, B.mac);
  assert.equal(connects(guestA, A.address), false, 'another VM\'s source MAC is dropped');
  setMac(guestA, A.mac);
  assert.equal(connects(guestA, A.address), true);
  assert.equal(connects(guestB, B.address), true);
});

test('a stale binding of a reused port name is replaced, an old VM\'s unbind leaves the new one alone, unbinding fails closed', { skip }, async () => {
  // A dead VM bound this port name to other values; a new VM (A) binds it again and works.
  await bindPort({ ...A, mac: '02:fc:00:00:00:99', address: '10.77.0.99', owner: 'deaddeaddead' }, nft, 'shoal');
  assert.equal(connects(guestA, A.address), false);
  await bindPort(A, nft, 'shoal');
  assert.equal(connects(guestA, A.address), true);
  // `rm -f` of the dead VM does not remove the new VM's rules.
  assert.equal(await unbindPort(A.port, 'deaddeaddead', nft, 'shoal'), false);
  assert.equal(await portOwner(A.port, nft, 'shoal'), A.owner);
  assert.equal(connects(guestA, A.address), true);
  // The VM's own release removes them; a port named like shoal's TAPs then carries nothing.
  assert.equal(await unbindPort(A.port, A.owner, nft, 'shoal'), true);
  assert.equal(await portOwner(A.port, nft, 'shoal'), undefined);
  assert.doesNotMatch(await nft(['list', 'table', 'bridge', 'shoal']), /shoal-ta/);
  assert.equal(connects(guestA, A.address), false);
  // Idempotent, and B was never disturbed.
  assert.equal(await unbindPort(A.port, A.owner, nft, 'shoal'), false);
  assert.equal(connects(guestB, B.address), true);
  assert.equal(await unbindPort(B.port, B.owner, nft, 'shoal'), true);
});
