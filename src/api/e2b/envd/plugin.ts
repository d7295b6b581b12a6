/**
 * envd inside `shoal serve`: the e2b SDK's E2B_SANDBOX_URL is http://HOST:PORT/e2b/envd, under
 * which the Connect services (process.Process, filesystem.Filesystem; JSON or binary) and envd's
 * HTTP routes answer, plus the root `/files` that the SDK's signed URLs reach (files-routes.ts).
 * These calls carry the sandbox's envd token, not shoal's API token: server.ts lets them past its
 * bearer check (isEnvdUrl) and each call here is authenticated by sandbox-auth.ts.
 *
 * connect-fastify registers its routes with `instance.all(path)`, so fastify's `prefix` applies
 * to them as to any plugin's routes; no URL rewriting is needed.
 */
import { fastifyConnectPlugin } from '@connectrpc/connect-fastify';
import type { FastifyInstance } from 'fastify';
import type { Core } from '../../core';
import { registerFilesRoutes, registerHealthRoute } from './files-routes';
import { filesystemService, WatcherTable } from './filesystem-service';
import { Filesystem } from './gen/filesystem/filesystem_pb';
import { Process } from './gen/process/process_pb';
import { EnvdProcessTable, type ProcessTableLimits } from './process-table';
import { BashProbe, processService, RootProbe } from './process-service';

export const ENVD_PREFIX = '/e2b/envd';

export interface EnvdOptions {
  core: Core;
  maxFileBytes: number;
  processLimits?: ProcessTableLimits;
}

/** URLs that envd authenticates itself (the sandbox's token or a signature), not with shoal's token. */
export function isEnvdUrl(url: string): boolean {
  const p = url.split('?')[0]!;
  return p === ENVD_PREFIX || p.startsWith(`${ENVD_PREFIX}/`) || p === '/files';
}

/** envd's routes are not the native API's: they stay out of its OpenAPI document (/v1/openapi.json). */
function hideFromOpenApi(scope: FastifyInstance): void {
  scope.addHook('onRoute', (route) => {
    route.schema = { ...(route.schema ?? {}), hide: true };
  });
}

export async function registerEnvd(app: FastifyInstance, options: EnvdOptions): Promise<void> {
  const { core } = options;
  const table = new EnvdProcessTable(options.processLimits);
  const watchers = new WatcherTable();
  const bash = new BashProbe(core);
  const root = new RootProbe(core);
  app.addHook('onClose', async () => watchers.close());
  const files = { core, maxFileBytes: options.maxFileBytes };

  await app.register(async (scope) => {
    hideFromOpenApi(scope);
    await scope.register(fastifyConnectPlugin, {
      // One message at most this big (Connect's default is 4 GiB): input is capped at 1 MiB, base64 in JSON.
      readMaxBytes: 4 * 1024 * 1024,
      routes: (router) => {
        router.service(Process, processService({ core, table, bash, root }));
        router.service(Filesystem, filesystemService(core, watchers));
      },
    });
  }, { prefix: ENVD_PREFIX });
  await app.register(async (scope) => {
    hideFromOpenApi(scope);
    registerFilesRoutes(scope, files);
    registerHealthRoute(scope, core);
  }, { prefix: ENVD_PREFIX });
  // Signed URLs (see files-routes.ts): the root /files.
  await app.register(async (scope) => {
    hideFromOpenApi(scope);
    registerFilesRoutes(scope, files);
  });
}
