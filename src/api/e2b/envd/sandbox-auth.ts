/**
 * Which sandbox an envd call is for, and whether the caller may make it. The SDK names the
 * sandbox in the `E2b-Sandbox-Id` header (its id is the shoal VM's name) and sends the sandbox's
 * envdAccessToken as `X-Access-Token`. A VM without E2B facts (made by the CLI or the native API)
 * has no envd token, so every envd call to it is refused.
 */
import type { Core, VmView } from '../../core';
import { readE2bFacts, tokenMatches, type E2bFacts } from '../sandbox-facts';

export interface EnvdSandbox {
  vm: VmView;
  facts: E2bFacts;
}

export type EnvdDenial = 'unauthenticated' | 'permission_denied' | 'not_found' | 'unavailable' | 'bad_request';

/** Why a call is refused; each transport (Connect, plain HTTP) turns it into its own error shape. */
export class EnvdAuthError extends Error {
  constructor(readonly kind: EnvdDenial, message: string) {
    super(message);
    this.name = 'EnvdAuthError';
  }
}

const SANDBOX_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** A header's one value (a repeated header is refused rather than guessed at). */
export type HeaderGetter = (name: string) => string | undefined;

/** The sandbox an E2B sandbox id names, with its facts; refuses what is not an E2B sandbox. */
export function e2bSandbox(core: Core, sandboxId: string | undefined): EnvdSandbox {
  if (sandboxId === undefined || sandboxId === '') throw new EnvdAuthError('bad_request', 'missing E2b-Sandbox-Id header');
  if (!SANDBOX_ID.test(sandboxId)) throw new EnvdAuthError('bad_request', 'invalid E2b-Sandbox-Id header');
  const vm = core.find(sandboxId);
  if (!vm) throw new EnvdAuthError('not_found', `sandbox ${sandboxId} not found`);
  const facts = readE2bFacts(core.vmDir(vm.id));
  // Only E2B's sandboxes (whose id is the VM name) have an envd; a CLI-made VM has no token.
  if (!facts || facts.sandboxId !== vm.name) throw new EnvdAuthError('permission_denied', `sandbox ${sandboxId} was not made through the E2B API: it has no envd access token`);
  return { vm, facts };
}

/** The sandbox of a call authenticated by its headers (E2b-Sandbox-Id, X-Access-Token). */
export function authenticate(core: Core, header: HeaderGetter): EnvdSandbox {
  const sandbox = e2bSandbox(core, header('e2b-sandbox-id'));
  const token = header('x-access-token');
  if (token === undefined) throw new EnvdAuthError('unauthenticated', 'missing X-Access-Token header');
  if (!tokenMatches(token, sandbox.facts.envdAccessToken)) throw new EnvdAuthError('unauthenticated', 'wrong access token');
  return sandbox;
}

/** Every E2B sandbox there is (for a signed URL, which names none: its signature does). */
export function e2bSandboxes(core: Core): EnvdSandbox[] {
  const out: EnvdSandbox[] = [];
  for (const vm of core.list()) {
    const facts = readE2bFacts(core.vmDir(vm.id));
    if (facts && facts.sandboxId === vm.name) out.push({ vm, facts });
  }
  return out;
}

/** The sandbox is there but must run for envd to answer. */
export function requireRunning(sandbox: EnvdSandbox): void {
  if (sandbox.vm.status !== 'running') throw new EnvdAuthError('unavailable', `sandbox ${sandbox.vm.name} is ${sandbox.vm.status}, not running`);
}
