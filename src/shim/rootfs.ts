/**
 * The container's root filesystem as containerd's snapshotter gives it (the Create request's
 * mounts), mounted at bundle/rootfs like runc's shim does, and handed to the VM as a
 * docker-archive whose one layer is that tree: the guest's podman loads it (never pulls), and
 * runs the container on it. Ownership, modes and xattrs travel in the tar (GNU tar, numeric ids).
 */
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { ShoalError } from '../util/errors';

const run = promisify(execFile);

export interface RootfsMount {
  type: string;
  source: string;
  options: string[];
}

const MOUNT_TYPE = /^[a-z0-9_.-]{1,32}$/;

export function rootfsDir(bundle: string): string {
  return path.join(bundle, 'rootfs');
}

/** Mounts the snapshotter's mounts at bundle/rootfs (none: the bundle's rootfs is already there). */
export async function mountRootfs(bundle: string, mounts: RootfsMount[]): Promise<void> {
  if (mounts.length > 1) throw new ShoalError(`more than one rootfs mount (${mounts.length}) is not supported`);
  const target = rootfsDir(bundle);
  fs.mkdirSync(target, { recursive: true, mode: 0o711 });
  const mount = mounts[0];
  if (!mount) return;
  if (!MOUNT_TYPE.test(mount.type)) throw new ShoalError(`invalid rootfs mount type "${mount.type.slice(0, 40)}"`);
  if (mount.options.some((o) => o.includes(',') && mount.type !== 'overlay') || mount.options.some((o) => o.includes('\0'))) throw new ShoalError('invalid rootfs mount options');
  const argv = ['-t', mount.type];
  if (mount.options.length > 0) argv.push('-o', mount.options.join(','));
  argv.push('--', mount.source, target);
  try {
    await run('mount', argv, { timeout: 30_000 });
  } catch (err) {
    throw new ShoalError(`mounting the rootfs (${mount.type}) failed: ${((err as { stderr?: string }).stderr ?? (err as Error).message).trim().split('\n').pop()}`);
  }
}

/** Unmounts bundle/rootfs if it is a mount point; quiet when it is not (or is gone). */
export async function unmountRootfs(bundle: string): Promise<void> {
  const target = rootfsDir(bundle);
  if (!fs.existsSync(target)) return;
  await run('umount', [target], { timeout: 30_000 }).catch(() => run('umount', ['-l', target], { timeout: 30_000 }).catch(() => undefined));
}

/**
 * Writes a docker-archive of the rootfs to `file` (built in a temp directory beside it) and
 * returns the image reference it is tagged with.
 */
export async function buildRootfsArchive(rootfs: string, file: string, tag: string): Promise<void> {
  const work = `${file}.d`;
  fs.rmSync(work, { recursive: true, force: true });
  fs.mkdirSync(work, { mode: 0o700 });
  try {
    const layer = path.join(work, 'layer.tar');
    try {
      await run('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '--sort=name', '-C', rootfs, '-cf', layer, '.'], { timeout: 600_000, maxBuffer: 1 << 20 });
    } catch (err) {
      throw new ShoalError(`archiving the rootfs failed: ${((err as { stderr?: string }).stderr ?? (err as Error).message).trim().split('\n').pop()}`);
    }
    const diffId = await sha256File(layer);
    const config = Buffer.from(JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: {},
      rootfs: { type: 'layers', diff_ids: [`sha256:${diffId}`] },
      history: [{ created_by: 'containerd-shim-shoal-v2 (the snapshotter\'s rootfs)' }],
    }));
    fs.writeFileSync(path.join(work, 'config.json'), config);
    fs.writeFileSync(path.join(work, 'manifest.json'), JSON.stringify([{ Config: 'config.json', RepoTags: [tag], Layers: ['layer.tar'] }]));
    await run('tar', ['-C', work, '-cf', file, 'manifest.json', 'config.json', 'layer.tar'], { timeout: 600_000 });
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function sha256File(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = crypto.createHash('sha256');
    fs.createReadStream(file).on('data', (c) => hash.update(c)).on('error', reject).on('end', () => resolve(hash.digest('hex')));
  });
}
