/**
 * How large a VM's container.log and console.log may grow before they are rotated (each keeps
 * one rotated predecessor, so a log takes at most twice this). SHOAL_LOG_MAX_BYTES, default
 * 16 MiB, at least 64 KiB.
 */
export const DEFAULT_LOG_MAX_BYTES = 16 * 1024 * 1024;
const MIN_LOG_MAX_BYTES = 64 * 1024;

export function logMaxBytes(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.SHOAL_LOG_MAX_BYTES;
  if (raw === undefined || !/^\d+$/.test(raw)) return DEFAULT_LOG_MAX_BYTES;
  return Math.max(MIN_LOG_MAX_BYTES, Number(raw));
}

/**
 * The largest record of a container log (stream:u8 length:u32be bytes): the writer splits
 * longer data, so a reader refuses a length field above this instead of allocating it (the
 * file holds what a guest sent; a torn or misaligned read would otherwise be believed).
 */
export const CONTAINER_LOG_MAX_RECORD = 1024 * 1024;
