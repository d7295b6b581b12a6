/**
 * What the shim leaves in a container's bundle so that `delete` (containerd's clean-up after a
 * shim that died) can find what to remove: the shoal VM's id and the state directory it lives
 * in. Written atomically; read back with its shape checked.
 */
import fs from 'node:fs';
import path from 'node:path';

export const BUNDLE_STATE_FILE = 'shoal-vm.json';
export const ROOTFS_ARCHIVE_FILE = 'shoal-rootfs.tar';

export interface BundleState {
  vmId: string;
  stateDir: string;
}

export function writeBundleState(bundle: string, state: BundleState): void {
  const file = path.join(bundle, BUNDLE_STATE_FILE);
  const temp = `${file}.tmp`;
  fs.writeFileSync(temp, JSON.stringify(state), { mode: 0o600 });
  fs.renameSync(temp, file);
}

export function readBundleState(bundle: string): BundleState | undefined {
  try {
    const value: unknown = JSON.parse(fs.readFileSync(path.join(bundle, BUNDLE_STATE_FILE), 'utf8'));
    if (typeof value !== 'object' || value === null) return undefined;
    const { vmId, stateDir } = value as Record<string, unknown>;
    if (typeof vmId !== 'string' || !/^[0-9a-f]{12}$/.test(vmId) || typeof stateDir !== 'string' || !path.isAbsolute(stateDir)) return undefined;
    return { vmId, stateDir };
  } catch {
    return undefined;
  }
}

export function removeBundleFiles(bundle: string): void {
  for (const name of [BUNDLE_STATE_FILE, ROOTFS_ARCHIVE_FILE]) fs.rmSync(path.join(bundle, name), { force: true });
}
