/**
 * The guest kernel command line.
 *
 * BASE_CMDLINE is what every shoal guest starts from (the VMM layer appends
 * shoal.* keys and its own device keys). Measured on QEMU microvm under TCG:
 * the extra keys skip probing of hardware a microVM does not have.
 *
 * Under TCG the guest TSC runs at the host TSC rate, and microvm has no
 * HPET/PM timer, so the kernel calibrates the TSC against the PIT; that
 * calibration is timing-sensitive and fails when the host is busy, after
 * which the kernel hangs in early boot (7 boots of 8 under a 2-core `yes`
 * load, 0 of 8 with the fix). `tsc_early_khz=<host TSC kHz>` skips it.
 */
import fs from 'node:fs';
import type { Accelerator } from '../vmm/backend';

export const BASE_CMDLINE =
  'console=ttyS0 quiet no_timer_check tsc=reliable panic=-1 reboot=t 8250.nr_uarts=1 pci=off ' +
  'i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd random.trust_cpu=on cryptomgr.notests';

function readText(p: string): string | null {
  try {
    return fs.readFileSync(p, 'utf8');
  } catch {
    return null;
  }
}

/**
 * Host TSC frequency in kHz from /proc/cpuinfo (`cpu MHz` when there is no
 * cpufreq scaling, the nominal "@ x.yzGHz" of the model name, or the cpufreq
 * base frequency), or null when it can't be told.
 */
export function hostTscKhz(cpuinfo: string | null = readText('/proc/cpuinfo'), sysCpu = '/sys/devices/system/cpu/cpu0'): number | null {
  if (!cpuinfo) return null;
  const first = cpuinfo.split(/\n\s*\n/)[0] ?? '';
  const flags = /^flags\s*:\s*(.*)$/m.exec(first)?.[1]?.split(/\s+/) ?? [];
  if (!flags.includes('constant_tsc')) return null;
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(first)?.[1] ?? NaN);
  const hasCpufreq = fs.existsSync(`${sysCpu}/cpufreq`);
  if (!hasCpufreq && mhz > 100) return Math.round(mhz * 1000);
  const nominal = /^model name\s*:.*@\s*([\d.]+)\s*GHz/m.exec(first)?.[1];
  if (nominal) return Math.round(Number(nominal) * 1e6);
  const base = Number(readText(`${sysCpu}/cpufreq/base_frequency`)?.trim() ?? NaN);
  if (base > 100_000) return base;
  return mhz > 100 ? Math.round(mhz * 1000) : null;
}

/** BASE_CMDLINE plus what this host needs for the accelerator (tsc_early_khz under TCG). */
export function guestCmdline(accel: Accelerator, tscKhz: number | null = accel === 'tcg' ? hostTscKhz() : null): string {
  if (accel === 'tcg' && tscKhz) return `${BASE_CMDLINE} tsc_early_khz=${tscKhz}`;
  return BASE_CMDLINE;
}
