/** The environment every process the agent starts begins with (the request's env is laid over it). */
import os from 'node:os';

export function baseEnv(): Record<string, string> {
  return {
    PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: '/root',
    HOSTNAME: os.hostname(),
  };
}
