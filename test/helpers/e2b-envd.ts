/**
 * An e2b SDK Sandbox for an envd test: the official SDK's own Sandbox object, built with its
 * public constructor (what Sandbox.create / connect build after the control API answers), aimed
 * at a `shoal serve`'s /e2b/envd as E2B_SANDBOX_URL would be, and the E2B facts that make a VM an
 * E2B sandbox (normally written by the sandbox API).
 */
import { Sandbox } from 'e2b';
import { ENVD_VERSION } from '../../src/api/e2b/sandboxes';
import { newAccessToken, writeE2bFacts } from '../../src/api/e2b/sandbox-facts';

export { ENVD_VERSION } from '../../src/api/e2b/sandboxes';

export function makeE2bSandbox(vmDir: string, sandboxId: string): string {
  const token = newAccessToken();
  writeE2bFacts(vmDir, { sandboxId, templateId: 'test', envdAccessToken: token, trafficAccessToken: null, secure: true, autoPause: false, defaultUser: 'user', envVars: {} });
  return token;
}

export function sdkSandbox(baseUrl: string, sandboxId: string, envdAccessToken: string): Sandbox {
  return new Sandbox({ sandboxId, envdVersion: ENVD_VERSION, envdAccessToken, sandboxUrl: `${baseUrl}/e2b/envd`, apiKey: `e2b_${'0'.repeat(40)}`, requestTimeoutMs: 30_000 });
}
