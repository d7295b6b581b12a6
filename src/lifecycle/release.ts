/**
 * Releasing a VM's host resources once its VMM is gone: by its supervisor at the end, and by the
 * CLI (`rm -f`, stop) after a supervisor that died.
 */
import fs from 'node:fs';
import { releaseAddress, removeTap, tapName } from '../network/bridge';
import { unmirrorTap } from '../network/netns-attach';
import { unbindPort } from '../network/port-binding';
import type { VmRecord } from '../state/vm-record';
import { memoryFilePath, removeSockets, vmFiles } from '../state/vm-files';
import { isJailOf, jailDirOf } from '../vmm/select';

/**
 * Everything a VM holds on the host besides its record, released once its VMM is gone: by its
 * supervisor at the end, and by `rm -f` after a supervisor that died. The record must be current
 * (a bridged VM's address is in it).
 */
export async function releaseVmResources(record: VmRecord, dir: string): Promise<void> {
  removeJail(record);
  if (record.config.network === 'bridged') {
    // QEMU's TAP goes with it; one made for Firecracker does not. The address claim is released
    // here, or taken over later.
    await removeTap(tapName(record.id));
    // Its MAC/address binding, if still its own (a new VM may have taken the TAP name since).
    // A failure here leaves only rules for a TAP that is gone: the next VM with that name
    // rewrites them, so it must not stop the rest of the release.
    await unbindPort(tapName(record.id), record.id).catch(() => false);
    releaseAddress(record.id, record.bridgedAddress);
  }
  if (record.config.network === 'ns' && record.config.netnsPath && record.netnsInterface) {
    // The pod's interface gets its own traffic back (its namespace belongs to CNI).
    await unmirrorTap(record.config.netnsPath, record.netnsInterface);
  }
  removeSockets(dir);
  fs.rmSync(vmFiles(dir).scratchDisk, { force: true });
  fs.rmSync(memoryFilePath(record.id), { force: true });
}

/** Removes a jailed VM's jail directory (the jailer does not), once its VMM is gone. */
function removeJail(record: VmRecord): void {
  if (!record.config.jailer) return;
  // Older records have no jailDir: then as the jailer would name it with today's binary.
  const dir = record.jailDir ?? jailDirOf(record.id, record.config.jailer);
  // The record is only trusted to name this VM's own jail under the chroot base.
  if (dir && isJailOf(dir, record.id, record.config.jailer)) fs.rmSync(dir, { recursive: true, force: true });
}
