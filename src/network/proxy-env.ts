/**
 * The host's HTTP proxy settings, carried to the guest's podman (for pulls) and from there to
 * containers (podman passes its own proxy variables on by default, `--http-proxy=true`). A proxy
 * on the host's loopback is rewritten to the address at which the guest reaches the host.
 */
const PROXY_VARIABLES = ['http_proxy', 'https_proxy', 'ftp_proxy', 'no_proxy', 'HTTP_PROXY', 'HTTPS_PROXY', 'FTP_PROXY', 'NO_PROXY'];

export function proxyEnvironment(hostEnv: NodeJS.ProcessEnv, hostAddressFromGuest: string | null): Record<string, string> {
  const env: Record<string, string> = {};
  for (const name of PROXY_VARIABLES) {
    const value = hostEnv[name];
    if (!value) continue;
    env[name] = /no_proxy/i.test(name) || !hostAddressFromGuest ? value : rewriteLoopback(value, hostAddressFromGuest);
  }
  return env;
}

function rewriteLoopback(value: string, hostAddress: string): string {
  return value.replace(/^(\w+:\/\/(?:[^@/]*@)?)(localhost|127(?:\.\d+){3}|\[::1\])(?=[:/]|$)/i, `$1${hostAddress}`);
}
