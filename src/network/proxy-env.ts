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

/**
 * A proxy variable that names the host's loopback, which a guest that cannot reach the host's
 * loopback could not use: the one-line reason to refuse the run, or null.
 */
export function loopbackProxyProblem(hostEnv: NodeJS.ProcessEnv, mode: string): string | null {
  for (const name of PROXY_VARIABLES) {
    const value = hostEnv[name];
    if (!value || /no_proxy/i.test(name) || rewriteLoopback(value, '\0') === value) continue;
    // The value is not repeated: it may carry credentials.
    return `${name} names a proxy on the host's loopback, which a --network ${mode} guest cannot reach by default: ` +
      `use --network ${mode}:allow_host_loopback=true to let the guest reach the host's loopback, or unset ${name}`;
  }
  return null;
}
