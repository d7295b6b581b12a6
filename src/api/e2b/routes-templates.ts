/**
 * Templates and snapshots as E2B's SDK reaches them: the templates list and alias lookup (a
 * template is a --template alias or a snapshot), createSnapshot, the snapshots list, and
 * deleteSnapshot (which the SDK sends as DELETE /templates/{id}: a snapshot is a template there).
 */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { Core } from '../core';
import { badRequest, notFound } from './errors';
import { ENVD_VERSION, type E2bSandboxes } from './sandboxes';
import * as S from './schemas';
import { isReservedTag, TEMPLATE_CPUS, TEMPLATE_MEMORY_MIB } from './templates';

export function registerTemplateRoutes(app: FastifyInstance, core: Core, sandboxes: E2bSandboxes): void {
  const { templates } = sandboxes;

  app.get('/templates', { schema: { response: { 200: Type.Array(S.Template) } } }, async () => {
    const out: S.Template[] = [];
    for (const [alias] of templates.aliases) {
      const built = templates.builtSnapshot(alias);
      out.push(template(alias, [alias], built?.createdAt ?? null, built ? 'ready' : 'waiting'));
    }
    for (const s of core.snapshots()) {
      if (!isReservedTag(s.tag)) out.push(template(s.tag, [], s.createdAt, 'ready'));
    }
    return out;
  });

  app.get('/templates/aliases/:alias', { schema: { params: S.AliasParams, response: { 200: S.TemplateAlias } } }, async (request) => {
    const { alias } = request.params as { alias: string };
    if (!templates.aliases.has(alias)) throw notFound(`template alias ${alias} not found`);
    return { templateID: alias, public: false };
  });

  app.delete('/templates/:templateID', { schema: { params: S.TemplateIdParams } }, async (request, reply) => {
    sandboxes.deleteSnapshot((request.params as { templateID: string }).templateID);
    return reply.code(204).send();
  });

  app.post('/sandboxes/:sandboxID/snapshots', { schema: { params: S.SandboxIdParams, body: Type.Optional(S.SnapshotBody), response: { 201: S.SnapshotInfo } } }, async (request, reply) => {
    const { sandboxID } = request.params as { sandboxID: string };
    return reply.code(201).send(await sandboxes.snapshot(sandboxID, (request.body as { name?: string } | undefined)?.name));
  });

  app.get('/snapshots', { schema: { querystring: S.SnapshotsQuery, response: { 200: Type.Array(S.SnapshotInfo) } } }, async (request, reply) => {
    const query = request.query as { sandboxID?: string; name?: string; limit?: string; nextToken?: string };
    const all = sandboxes.snapshots(query.sandboxID).filter((s) => query.name === undefined || s.snapshotID === query.name);
    const limit = query.limit === undefined ? 100 : Number(query.limit);
    if (limit < 1 || limit > 100) throw badRequest('limit must be 1 to 100');
    const start = query.nextToken === undefined ? 0 : all.findIndex((s) => s.snapshotID === Buffer.from(query.nextToken!, 'base64url').toString('utf8')) + 1;
    if (start === 0 && query.nextToken !== undefined) throw badRequest('unknown nextToken');
    const page = all.slice(start, start + limit);
    if (start + limit < all.length) void reply.header('x-next-token', Buffer.from(page[page.length - 1]!.snapshotID).toString('base64url'));
    return page;
  });
}

function template(id: string, aliases: string[], builtAt: string | null, status: string): S.Template {
  const at = builtAt ?? new Date().toISOString();
  return {
    templateID: id,
    buildID: id,
    buildStatus: status,
    cpuCount: TEMPLATE_CPUS,
    memoryMB: TEMPLATE_MEMORY_MIB,
    diskSizeMB: 0,
    public: false,
    aliases,
    names: [id],
    createdAt: at,
    updatedAt: at,
    createdBy: null,
    lastSpawnedAt: null,
    spawnCount: 0,
    buildCount: builtAt ? 1 : 0,
    envdVersion: ENVD_VERSION,
  };
}
