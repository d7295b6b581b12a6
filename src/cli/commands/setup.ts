/**
 * `shoal setup [--force]`: build (or find cached) guest assets and decide the accelerator.
 */
import { ensureAssets } from '../../assets/setup';

export async function setupCommand(flags: { force?: boolean; json?: boolean }): Promise<number> {
  const assets = await ensureAssets({
    force: flags.force === true,
    progress: (message) => process.stderr.write(`shoal setup: ${message}\n`),
  });
  if (flags.json) {
    process.stdout.write(`${JSON.stringify(assets, null, 2)}\n`);
    return 0;
  }
  process.stdout.write(
    [
      `guest kernel   ${assets.kernelVersion}`,
      `kernel image   ${assets.vmlinuz}`,
      `vmlinux        ${assets.vmlinux}`,
      `initramfs      ${assets.initrd}`,
      `rootfs         ${assets.rootfs}`,
      `accelerator    ${assets.accel} (${assets.accelReason})`,
      `assets in      ${assets.dir}`,
    ].join('\n') + '\n',
  );
  return 0;
}
