/**
 * `shoal setup [--force] [--vmm firecracker [--firecracker PATH]]`: build (or find cached) guest
 * assets, decide the accelerator, and with --vmm firecracker install Firecracker.
 */
import type { Command } from 'commander';
import { act } from '../act';
import { ensureAssets } from '../../assets/setup';
import { ShoalError } from '../../util/errors';
import { installFirecracker } from '../../vmm/firecracker/install';

export interface SetupFlags {
  force?: boolean;
  json?: boolean;
  vmm?: string;
  firecracker?: string;
}

export async function setupCommand(flags: SetupFlags): Promise<number> {
  const vmm = flags.vmm ?? 'qemu';
  if (vmm !== 'qemu' && vmm !== 'firecracker' && vmm !== 'auto') throw new ShoalError(`invalid --vmm "${vmm}": expected auto, qemu or firecracker`);
  if (flags.firecracker && vmm !== 'firecracker') throw new ShoalError('--firecracker PATH goes with --vmm firecracker');
  const progress = (message: string): void => void process.stderr.write(`shoal setup: ${message}\n`);
  const assets = await ensureAssets({ force: flags.force === true, progress });
  let firecracker: string | undefined;
  if (vmm === 'firecracker') {
    let lastPercent = -1;
    const installed = await installFirecracker({
      ...(flags.firecracker ? { fromPath: flags.firecracker } : {}),
      onProgress: (p) => {
        if (p.total === null) return;
        const percent = Math.floor((p.received / p.total) * 10) * 10;
        if (percent !== lastPercent) progress(`downloading ${p.url}: ${percent}%`);
        lastPercent = percent;
      },
    });
    firecracker = installed.firecracker;
  }
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ ...assets, firecracker: firecracker ?? null }, null, 2)}\n`);
    return 0;
  }
  const lines = [
    `guest kernel   ${assets.kernelVersion}`,
    `kernel image   ${assets.vmlinuz}`,
    `vmlinux        ${assets.vmlinux}`,
    `initramfs      ${assets.initrd}`,
    `rootfs         ${assets.rootfs}`,
    `accelerator    ${assets.accel} (${assets.accelReason})`,
  ];
  if (firecracker) lines.push(`firecracker    ${firecracker}`);
  lines.push(`assets in      ${assets.dir}`);
  process.stdout.write(`${lines.join('\n')}\n`);
  return 0;
}

/** The command's flags, declared beside its handler. */
export function registerSetup(program: Command): void {
  program
    .command('setup')
    .description('build and cache the guest kernel, initramfs and rootfs; probe whether KVM works here')
    .option('--force', 'rebuild everything and probe again')
    .option('--json', 'print the asset paths as JSON')
    .option('--vmm <vmm>', 'also install this VMM: qemu (default) or firecracker')
    .option('--firecracker <path>', 'with --vmm firecracker: use this binary instead of downloading the release')
    .action(act((flags: Parameters<typeof setupCommand>[0]) => setupCommand(flags)));
}
