/**
 * The guest resolves names through the host's resolver, in every network mode. The "host's
 * resolver" is a DNS server this test runs, named in an /etc/resolv.conf that shoal sees in a
 * mount namespace of the test's (the host's own file is untouched), so no query leaves the host:
 * - rootless (QEMU slirp) and slirp4netns: the guest asks slirp's 10.0.2.3, which forwards to
 *   the host's nameserver, here one on the host's loopback;
 * - bridged: the guest asks the host's first non-loopback nameserver itself, here one on a veth
 *   pair the test creates.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { startDnsServer, type TestDnsServer } from '../helpers/dns-server';
import { busyboxImageForFile } from '../helpers/images';
import { ShoalSandbox } from '../helpers/shoal-cli';

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-dns-'));
const suffix = crypto.randomBytes(3).toString('hex');
const veth = `shdns${suffix}`;
const bridgedResolver = `10.98.${100 + (crypto.randomBytes(1)[0]! % 100)}.1`;
const loopbackResolver = '127.0.77.53';
const records = { 'shoal-test.example': '10.1.2.3' };
const busybox = busyboxImageForFile();
const servers: TestDnsServer[] = [];

/** A sandbox whose shoal sees `/etc/resolv.conf` naming `nameserver`. */
function sandboxResolvingWith(label: string, nameserver: string): ShoalSandbox {
  const resolvConf = path.join(work, `resolv-${label}.conf`);
  fs.writeFileSync(resolvConf, `nameserver ${nameserver}\n`);
  return new ShoalSandbox(label, {
    prefix: ['unshare', '--mount', '--propagation', 'private', 'sh', '-c', `mount --bind ${resolvConf} /etc/resolv.conf && exec "$0" "$@"`],
  });
}

before(async () => {
  servers.push(await startDnsServer(loopbackResolver, records));
  if (process.getuid?.() === 0) {
    const steps = [
      ['link', 'add', veth, 'type', 'veth', 'peer', 'name', `${veth}p`],
      ['addr', 'add', `${bridgedResolver}/32`, 'dev', veth],
      ['link', 'set', veth, 'up'],
      ['link', 'set', `${veth}p`, 'up'],
    ];
    for (const args of steps) {
      const result = spawnSync('ip', args, { encoding: 'utf8' });
      if (result.status !== 0) throw new Error(`ip ${args.join(' ')}: ${result.stderr}`);
    }
    servers.push(await startDnsServer(bridgedResolver, records));
  }
});

after(async () => {
  for (const server of servers) await server.close();
  spawnSync('ip', ['link', 'del', veth]);
  fs.rmSync(work, { recursive: true, force: true });
});

const LOOKUPS = 'cat /etc/resolv.conf; nslookup shoal-test.example; nslookup missing.example; true';

function assertResolved(output: string, nameserver: string): void {
  assert.match(output, new RegExp(`^nameserver ${nameserver.replaceAll('.', '\\.')}\\n`));
  assert.match(output, /Name:\s+shoal-test\.example\nAddress: 10\.1\.2\.3\n/);
  assert.match(output, /can't find missing\.example: NXDOMAIN/);
}

for (const mode of ['rootless', 'slirp4netns'] as const) {
  test(`${mode}: the guest resolves through the host's resolver (slirp's 10.0.2.3)`, async () => {
    const sandbox = sandboxResolvingWith(`dns-${mode}`, loopbackResolver);
    try {
      const seen = servers[0]!.queries.length;
      const result = await sandbox.run(['run', '--rm', '--no-snapshot', '--network', mode, busybox.ref, 'sh', '-c', LOOKUPS]);
      assert.equal(result.code, 0, result.stderr.toString());
      assertResolved(result.stdout.toString(), '10.0.2.3');
      assert.ok(servers[0]!.queries.slice(seen).includes('shoal-test.example'), 'the host\'s resolver was asked');
    } finally {
      sandbox.cleanup();
    }
  });
}

test('bridged: the guest asks the host\'s nameserver itself', { skip: process.getuid?.() !== 0 ? 'needs root (bridged networking)' : false }, async () => {
  const sandbox = sandboxResolvingWith('dns-bridged', bridgedResolver);
  try {
    const result = await sandbox.run(['run', '--rm', '--network', 'bridged', busybox.ref, 'sh', '-c', LOOKUPS]);
    assert.equal(result.code, 0, result.stderr.toString());
    assertResolved(result.stdout.toString(), bridgedResolver);
    assert.ok(servers[1]!.queries.includes('shoal-test.example'), 'the host\'s resolver was asked');
  } finally {
    sandbox.cleanup();
  }
});
