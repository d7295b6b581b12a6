/** The ranges a VM's size must fall in, checked by the core whichever front end asked. */
import os from 'node:os';
import { ShoalError } from '../util/errors';

/** Below this a Debian guest with Node and podman does not fit. */
export const MIN_MEMORY_MIB = 256;
export const MAX_CPUS = 64;

export function checkCpus(cpus: number, what = '--cpus'): number {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_CPUS) throw new ShoalError(`${what} ${cpus} is out of range (1 to ${MAX_CPUS})`);
  return cpus;
}

export function checkMemory(mib: number, what = '--memory'): number {
  if (!Number.isInteger(mib)) throw new ShoalError(`invalid ${what} ${mib}: expected whole MiB`);
  if (mib < MIN_MEMORY_MIB) throw new ShoalError(`${what} ${mib} is below the minimum of ${MIN_MEMORY_MIB} MiB`);
  const hostMiB = Math.floor(os.totalmem() / 1048576);
  if (mib > hostMiB) throw new ShoalError(`${what} ${mib} is more than this host's ${hostMiB} MiB`);
  return mib;
}
