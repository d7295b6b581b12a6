/**
 * `--health-check URL`: polled from inside the guest (the container shares the VM's network
 * namespace, so `http://localhost:PORT/...` reaches the app), with the guest's own Node, until a
 * 2xx or 3xx answer. Used to take the startup snapshot once the app is really up.
 */
import { execCollect } from '../host/exec-client';
import type { Mux } from '../protocol/mux';
import { ShoalError } from '../util/errors';
import { sleep } from '../util/process';

/** One GET with a 2 s timeout; exit 0 on 2xx/3xx. Runs in the guest under its Node. */
const PROBE = `
const url = new URL(process.argv[1]);
const lib = require(url.protocol === 'https:' ? 'https' : 'http');
const req = lib.get(url, { timeout: 2000, rejectUnauthorized: false }, (res) => {
  res.resume();
  process.exit(res.statusCode >= 200 && res.statusCode < 400 ? 0 : 1);
});
req.on('timeout', () => req.destroy(new Error('timeout')));
req.on('error', () => process.exit(1));
`;

/** Parsed where the user gives it (src/container/container-options.ts); re-exported for older importers. */
export { parseHealthCheck } from '../container/container-options';

/** Resolves once the URL answers from inside the guest; rejects after timeoutMs or when `stopped()` says so. */
export async function waitHealthy(agent: Mux, url: string, timeoutMs: number, stopped: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!stopped()) {
    // Each probe within what is left of the deadline: a hung guest must not hold the loop.
    const left = Math.max(1000, deadline - Date.now());
    const result = await execCollect(agent, { argv: ['node', '-e', PROBE, url] }, undefined, { timeoutMs: left }).catch(() => undefined);
    if (result?.code === 0) return;
    if (Date.now() > deadline) throw new ShoalError(`the health check ${url} did not pass within ${Math.round(timeoutMs / 1000)} s`);
    await sleep(1000);
  }
  throw new ShoalError('the VM stopped before its health check passed');
}
