/**
 * Guest assets end to end: ensureAssets() (slow the first time, cached after),
 * then real boots under QEMU TCG (1 vCPU):
 *  - the KVM-probe path of the initramfs (shoal.probe=1 -> SHOAL-PROBE-OK);
 *  - a full boot with the real rootfs (vda, read-only) and a fresh scratch
 *    disk (vdb), where a stand-in agent main.js (this test's, not shipped)
 *    checks from inside the guest that node and podman work, that
 *    /var/lib/containers is on the scratch disk, runs a container, and prints
 *    one result line on the console before powering off.
 * QEMU is always killed (hard timeouts), whatever happens.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ensureInitramfs } from '../../src/assets/initramfs';
import { PROBE_MARKER, runUntilSerial } from '../../src/assets/probe';
import { currentKernel, ensureAssets, loadAssets, type GuestAssets } from '../../src/assets/setup';
import { isElf } from '../../src/assets/vmlinux';

const BOOT_TIMEOUT_MS = 90_000;
const RESULT = 'SHOAL-E2E-RESULT';

/** The stand-in agent: runs checks inside the guest and reports them as one JSON line. */
const STAND_IN_MAIN = `
'use strict';
const { execSync } = require('child_process');
const fs = require('fs');
const con = fs.openSync('/dev/console', 'w');
const say = (s) => fs.writeSync(con, s + '\\n');
const uptime = () => Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
const r = { agentStartUptime: uptime() };
say('STAND-IN-AGENT-START ' + r.agentStartUptime);
const sh = (c) => {
  try { return { ok: true, out: execSync(c, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60000 }).trim() }; }
  catch (e) { return { ok: false, out: String(e.stderr || e.message).trim().slice(-400) }; }
};
r.node = process.version;
r.podman = sh('podman --version');
r.nodeCli = sh('node --version');
r.pid1 = fs.readFileSync('/proc/1/comm', 'utf8').trim();
r.hostname = sh('hostname').out;
const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\\n').map((l) => l.split(' '));
const mi = (mp) => { const m = mounts.find((f) => f[4] === mp); if (!m) return null; const i = m.indexOf('-'); return { root: m[3], fstype: m[i + 1], source: m[i + 2] }; };
r.containersMount = mi('/var/lib/containers');
r.rootMount = mi('/');
r.protocolDir = fs.existsSync('/run/shoal/agent/protocol/marker.js');
r.fuse = fs.existsSync('/sys/module/fuse');
r.vsock = fs.existsSync('/dev/vsock');
r.agentPort = (() => { try { return fs.readlinkSync('/dev/virtio-ports/shoal.agent'); } catch { return null; } })();
r.graphRoot = sh("podman info --format '{{.Store.GraphRoot}} {{.Store.GraphDriverName}} {{.Host.CgroupsVersion}}'");
sh('mkdir -p /tmp/cr/bin /tmp/cr/lib/x86_64-linux-gnu /tmp/cr/lib64 && cp /bin/dash /tmp/cr/bin/sh && cp /lib/x86_64-linux-gnu/libc.so.6 /tmp/cr/lib/x86_64-linux-gnu/ && cp /lib64/ld-linux-x86-64.so.2 /tmp/cr/lib64/');
r.podmanRun = sh('podman run --rm --rootfs /tmp/cr /bin/sh -c "echo hello-from-container"');
r.doneUptime = uptime();
say('${RESULT} ' + JSON.stringify(r));
fs.writeFileSync('/proc/sysrq-trigger', 'o');
`;

interface GuestReport {
  agentStartUptime: number;
  doneUptime: number;
  node: string;
  podman: { ok: boolean; out: string };
  nodeCli: { ok: boolean; out: string };
  pid1: string;
  hostname: string;
  containersMount: { root: string; fstype: string; source: string } | null;
  rootMount: { root: string; fstype: string; source: string } | null;
  protocolDir: boolean;
  fuse: boolean;
  vsock: boolean;
  agentPort: string | null;
  graphRoot: { ok: boolean; out: string };
  podmanRun: { ok: boolean; out: string };
}

let work: string;
let assets: GuestAssets;

before(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-e2e-assets-'));
});
after(() => fs.rmSync(work, { recursive: true, force: true }));

function qemuArgs(kernel: string, initrd: string, cmdline: string, extra: string[]): string[] {
  return [
    '-M', 'microvm', '-accel', 'tcg', '-cpu', 'max', '-m', '1024', '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio',
    '-kernel', kernel, '-initrd', initrd, '-append', cmdline, '-no-reboot',
    ...extra,
  ];
}

describe('guest assets (e2e, QEMU TCG)', { timeout: 30 * 60_000 }, () => {
  it('ensureAssets builds (or finds) kernel, vmlinux, initramfs and rootfs; a cached run is fast', async (t) => {
    const t0 = Date.now();
    assets = await ensureAssets({ progress: (m) => t.diagnostic(m) });
    t.diagnostic(`ensureAssets: ${Date.now() - t0} ms; accel ${assets.accel} (${assets.accelReason})`);
    for (const f of [assets.vmlinuz, assets.vmlinux, assets.initrd, assets.rootfs]) assert.ok(fs.statSync(f).size > 0, f);
    const head = Buffer.alloc(16);
    const fd = fs.openSync(assets.vmlinux, 'r');
    fs.readSync(fd, head, 0, 16, 0);
    fs.closeSync(fd);
    assert.ok(isElf(head), 'vmlinux is an ELF image');
    assert.match(assets.kernelVersion, /^\d+\.\d+\.\d+-\d+-cloud-amd64$/);
    assert.ok(assets.accel === 'kvm' || assets.accel === 'tcg');

    const t1 = Date.now();
    const again = await ensureAssets({});
    const cachedMs = Date.now() - t1;
    t.diagnostic(`cached ensureAssets: ${cachedMs} ms`);
    assert.deepEqual(again, assets);
    assert.ok(cachedMs < 5000, `cached run took ${cachedMs} ms`);
    assert.deepEqual(loadAssets(), assets);
  });

  it('the initramfs answers the KVM probe (shoal.probe=1) under TCG', async (t) => {
    assert.ok(assets, 'needs the assets from the first test');
    const r = await runUntilSerial('qemu-system-x86_64', qemuArgs(assets.vmlinuz, assets.initrd, `${assets.cmdline} shoal.probe=1`, []), PROBE_MARKER, BOOT_TIMEOUT_MS);
    t.diagnostic(`probe boot: ${r.ms} ms`);
    assert.ok(r.matched, `no ${PROBE_MARKER}; console:\n${r.output.slice(-2000)}`);
  });

  it('boots the rootfs with a scratch disk; node, podman and container storage work inside', async (t) => {
    assert.ok(assets, 'needs the assets from the first test');
    // The stand-in agent payload, in a private cache so the shared one is untouched.
    const agentDir = path.join(work, 'agent');
    const protocolDir = path.join(work, 'protocol');
    fs.mkdirSync(agentDir);
    fs.mkdirSync(protocolDir);
    fs.writeFileSync(path.join(agentDir, 'main.js'), STAND_IN_MAIN);
    fs.writeFileSync(path.join(protocolDir, 'marker.js'), 'module.exports = 1;\n');
    const initrd = await ensureInitramfs(currentKernel(), {
      root: path.join(work, 'cache'),
      payload: { agentDir, protocolDir, nativeAddon: null },
    });

    const scratch = path.join(work, 'scratch.img');
    fs.closeSync(fs.openSync(scratch, 'w'));
    fs.truncateSync(scratch, 2 * 1024 ** 3);
    const mk = spawnSync('mkfs.ext4', ['-q', '-F', '-L', 'shoal-scratch', scratch]);
    assert.equal(mk.status, 0, mk.stderr?.toString());

    const args = qemuArgs(assets.vmlinuz, initrd.path, `${assets.cmdline} shoal.hostname=e2e-assets`, [
      '-drive', `id=rootfs,file=${assets.rootfs},format=raw,if=none,readonly=on`,
      '-device', 'virtio-blk-device,drive=rootfs',
      '-drive', `id=scratch,file=${scratch},format=raw,if=none`,
      '-device', 'virtio-blk-device,drive=scratch',
      '-chardev', `socket,id=agent,path=${path.join(work, 'agent.sock')},server=on,wait=off`,
      '-device', 'virtio-serial-device',
      '-device', 'virtserialport,chardev=agent,name=shoal.agent',
    ]);
    const r = await runUntilSerial('qemu-system-x86_64', args, new RegExp(`${RESULT} [^\\n]*\\n`), BOOT_TIMEOUT_MS);
    t.diagnostic(`full boot + checks: ${r.ms} ms`);
    assert.ok(r.matched, `no result line (timedOut=${r.timedOut}); console:\n${r.output.slice(-3000)}`);
    const line = r.output.split('\n').find((l) => l.startsWith(RESULT))!.trim();
    const g = JSON.parse(line.slice(RESULT.length + 1)) as GuestReport;
    t.diagnostic(`guest: agent start at uptime ${g.agentStartUptime} s, checks done at ${g.doneUptime} s`);

    assert.match(g.node, /^v\d+\./);
    assert.ok(g.nodeCli.ok && /^v\d+\./.test(g.nodeCli.out), JSON.stringify(g.nodeCli));
    assert.ok(g.podman.ok && /^podman version \d/.test(g.podman.out), JSON.stringify(g.podman));
    assert.equal(g.pid1, 'tini');
    assert.equal(g.hostname, 'e2e-assets');
    assert.deepEqual(g.containersMount, { root: '/containers', fstype: 'ext4', source: '/dev/vdb' });
    assert.equal(g.rootMount?.fstype, 'overlay');
    assert.ok(g.protocolDir, '/run/shoal/agent/protocol is in place');
    assert.ok(g.fuse, 'fuse module loaded');
    assert.ok(g.vsock, '/dev/vsock exists');
    assert.match(g.agentPort ?? '', /^\.\.\/vport\d+p\d+$/);
    assert.ok(g.graphRoot.ok && g.graphRoot.out.startsWith('/var/lib/containers/storage overlay v2'), JSON.stringify(g.graphRoot));
    assert.ok(g.podmanRun.ok && g.podmanRun.out.endsWith('hello-from-container'), JSON.stringify(g.podmanRun));
  });
});
