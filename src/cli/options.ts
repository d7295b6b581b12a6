/**
 * Parsing and validating command-line values into shoal's types, each with a one-line error.
 */
import os from 'node:os';
import { ShoalError } from '../util/errors';
import type { VmmChoice } from '../vmm/select';

import { MAX_CPUS, MIN_MEMORY_MIB } from '../core/limits';

export { MAX_CPUS, MIN_MEMORY_MIB };

/** Memory in MiB: a plain number is MiB; k/m/g suffixes are accepted as podman does. */
export function parseMemory(value: string): number {
  const match = /^(\d+)\s*([kmg]?)i?b?$/i.exec(value.trim());
  if (!match) throw new ShoalError(`invalid --memory "${value}": expected MiB, e.g. 512 or 1g`);
  const amount = Number(match[1]);
  const unit = (match[2] ?? '').toLowerCase();
  const mib = unit === 'g' ? amount * 1024 : unit === 'k' ? Math.floor(amount / 1024) : amount;
  if (mib < MIN_MEMORY_MIB) throw new ShoalError(`--memory ${value} is below the minimum of ${MIN_MEMORY_MIB} MiB`);
  const hostMiB = Math.floor(os.totalmem() / 1048576);
  if (mib > hostMiB) throw new ShoalError(`--memory ${value} is more than this host's ${hostMiB} MiB`);
  return mib;
}

export function parseCpus(value: string): number {
  if (!/^\d+$/.test(value.trim())) throw new ShoalError(`invalid --cpus "${value}": expected a whole number of vCPUs`);
  const cpus = Number(value);
  if (cpus < 1 || cpus > MAX_CPUS) throw new ShoalError(`--cpus ${value} is out of range (1 to ${MAX_CPUS})`);
  return cpus;
}

export function parseVmm(value: string): VmmChoice {
  if (value === 'auto' || value === 'qemu' || value === 'firecracker') return value;
  throw new ShoalError(`invalid --vmm "${value}": expected auto, qemu or firecracker`);
}

/** commander collector for repeatable options. */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}
