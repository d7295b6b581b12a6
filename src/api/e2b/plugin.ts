/**
 * E2B's control API, mounted by server.ts at /e2b: `E2B_API_URL=http://HOST:PORT/e2b` points the
 * official SDK here. Its own auth (X-API-KEY: e2b_<shoal's token>) and E2B's error shape, in an
 * encapsulated fastify context, so neither leaks onto the native API's routes. envd (under
 * /e2b/envd) is a separate plugin with its own per-sandbox token.
 */
import type { FastifyInstance } from 'fastify';
import type { Core } from '../core';
import { apiKeyChecker } from './auth';
import { installErrorReplies } from './errors';
import { PausedStore } from './paused-store';
import { registerLogRoutes } from './routes-logs';
import { registerSandboxRoutes } from './routes-sandboxes';
import { registerTemplateRoutes } from './routes-templates';
import { E2bSandboxes } from './sandboxes';
import { Templates } from './templates';

export interface E2bApiOptions {
  /** Where the API keeps what outlives VMs (paused sandboxes): <state>/e2b. */
  stateDir: string;
  /** --template NAME=IMAGE, validated. */
  templates: ReadonlyMap<string, string>;
  /** --domain: getHost's base domain (null: none). */
  domain: string | null;
}

/** The operations, made before the routes so the server's reaper can ask them about expiries. */
export function e2bSandboxes(core: Core, options: E2bApiOptions): E2bSandboxes {
  return new E2bSandboxes(core, new Templates(core, options.templates), new PausedStore(options.stateDir), { domain: options.domain });
}

export function e2bApiPlugin(core: Core, sandboxes: E2bSandboxes, token: string, log: boolean) {
  return async (app: FastifyInstance): Promise<void> => {
    installErrorReplies(app, log);
    // E2B's API is described by E2B's spec, not by shoal's OpenAPI document.
    app.addHook('onRoute', (route) => {
      route.schema = { ...(route.schema ?? {}), hide: true };
    });
    app.addHook('onRequest', apiKeyChecker(token));
    registerSandboxRoutes(app, sandboxes);
    registerTemplateRoutes(app, core, sandboxes);
    registerLogRoutes(app, core, sandboxes);
  };
}
