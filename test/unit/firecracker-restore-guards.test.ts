/**
 * Guards around Firecracker restores and jails (issue 15 items 5 and 9): the Uffd backend's
 * userfaultfd access, jailed restores refused at the driver, and a jail that never gets a copy
 * of a disk the VM writes.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FirecrackerBackend } from '../../src/vmm/firecracker/backend';
import { linkIntoJail } from '../../src/vmm/firecracker/launch';
import { hasSysPtrace, uffdAccessProblem } from '../../src/vmm/firecracker/uffd-access';
import { placeStandIns } from '../../src/vmm/firecracker/stand-ins';
import { setTimeout as sleep } from 'node:timers/promises';

let dir = '';
before(() => {
  dir = fs.mkdtempSync('/tmp/fcg-');
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('item 5: userfaultfd access for the Uffd backend', () => {
  it('privileged means CAP_SYS_PTRACE in CapEff, not euid 0 (a container may drop it)', () => {
    assert.equal(hasSysPtrace('Name:\tnode\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n'), true, 'full root set');
    // Docker's default capability set: root in the container, without CAP_SYS_PTRACE (bit 19).
    assert.equal(hasSysPtrace('Uid:\t0\t0\t0\t0\nCapEff:\t00000000a80425fb\n'), false);
    assert.equal(hasSysPtrace('CapEff:\t0000000000080000\n'), true, 'CAP_SYS_PTRACE alone');
    assert.equal(hasSysPtrace('no such line'), false);
  });

  it('is fine with a read-write /dev/userfaultfd, as root outside a user namespace, or with vm.unprivileged_userfaultfd=1', () => {
    const device = path.join(dir, 'userfaultfd');
    const sysctl = path.join(dir, 'unprivileged_userfaultfd');
    fs.writeFileSync(device, '');
    fs.writeFileSync(sysctl, '0\n');
    assert.equal(uffdAccessProblem({ device, sysctl, privileged: false }), null);
    assert.equal(uffdAccessProblem({ device: path.join(dir, 'none'), sysctl, privileged: true }), null);
    const problem = uffdAccessProblem({ device: path.join(dir, 'none'), sysctl, privileged: false });
    assert.match(problem!, /needs read-write access to .*none .* or CAP_SYS_PTRACE, which a slirp4netns user namespace cannot give/);
    assert.doesNotMatch(problem!, /\n/, 'one line');
    fs.writeFileSync(sysctl, '1\n');
    assert.equal(uffdAccessProblem({ device: path.join(dir, 'none'), sysctl, privileged: false }), null);
  });
});

describe('item 9: jailed snapshots stay refused, without a dead restore path', () => {
  it('a restore under --jailer is refused before anything starts', async () => {
    const b = new FirecrackerBackend({ binary: '/bin/true', jailer: { jailerBinary: '/bin/true', uid: 1, gid: 1, chrootBaseDir: path.join(dir, 'jail') } });
    await assert.rejects(b.restore({
      id: 'a', runDir: path.join(dir, 'a'), snapshot: { stateFile: '/s', memoryFile: '/m' }, memory: { kind: 'file', path: '/m' },
      source: { id: 's', runDir: '/r', kernel: '/k', cmdline: '', cpus: 1, memoryMiB: 256, drives: [], accel: 'kvm', consoleLog: '/c' }, drives: [], consoleLog: '/c',
    }), /restoring a snapshot under --jailer is not supported/);
    assert.equal(fs.existsSync(path.join(dir, 'jail')), false);
  });

  it('a disk the VM writes is hard-linked into the jail, never copied across filesystems; read-only files may be copied', async (t) => {
    const other = fs.mkdtempSync('/dev/shm/fcg-');
    try {
      if (fs.statSync(other).dev === fs.statSync(dir).dev) {
        t.skip('/dev/shm and /tmp are one filesystem here: no EXDEV to provoke');
        return;
      }
      const disk = path.join(other, 'scratch.img');
      fs.writeFileSync(disk, 'disk');
      await assert.rejects(linkIntoJail(disk, path.join(dir, 'drive-scratch.img'), true), /must be hard-linked into the jail, never copied/);
      assert.equal(fs.existsSync(path.join(dir, 'drive-scratch.img')), false);
      await linkIntoJail(disk, path.join(dir, 'kernel'), false);
      assert.equal(fs.readFileSync(path.join(dir, 'kernel'), 'utf8'), 'disk');
    } finally {
      fs.rmSync(other, { recursive: true, force: true });
    }
  });
});

describe('item 2: stand-ins at a snapshot\'s recorded drive paths', () => {
  it('has the clone disk\'s size, and concurrent loads of one snapshot take turns with it', async () => {
    const recorded = path.join(dir, 'gone', 'vms', 'abc', 'scratch.img');
    const clone = path.join(dir, 'clone.img');
    fs.writeFileSync(clone, '');
    fs.truncateSync(clone, 1 << 20);
    const first = await placeStandIns([{ recorded, replacement: clone }], dir);
    assert.equal(fs.statSync(recorded).size, 1 << 20);
    assert.equal(fs.statSync(recorded).mode & 0o777, 0o600);
    let secondPlaced = false;
    const second = placeStandIns([{ recorded, replacement: clone }], dir).then((release) => {
      secondPlaced = true;
      return release;
    });
    await sleep(300);
    assert.equal(secondPlaced, false, 'the second load waits while the first holds the stand-in');
    first();
    const release = await second;
    assert.ok(fs.existsSync(recorded));
    release();
    assert.equal(fs.existsSync(path.join(dir, 'gone')), false, 'stand-in and the directories made for it are gone');
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.startsWith('.fc-load-')), []);
  });
});
