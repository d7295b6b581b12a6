/**
 * E2B's sandbox routes (SDK 2.51.0 calls the /v2 create, list and connect; the older paths are
 * kept for older SDKs and other clients of E2B's API): HTTP in, E2bSandboxes calls, E2B's
 * status codes out.
 */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { badRequest, conflict } from './errors';
import type { E2bSandboxes } from './sandboxes';
import { DEFAULT_TIMEOUT_SEC } from './sandboxes';
import * as S from './schemas';

type IdRequest = { params: { sandboxID: string } };

export function registerSandboxRoutes(app: FastifyInstance, sandboxes: E2bSandboxes): void {
  const create = { schema: { body: S.NewSandbox, response: { 201: S.Sandbox } } };
  const createHandler = async (request: { body: unknown }, reply: { code(n: number): { send(v: unknown): unknown } }): Promise<unknown> => reply.code(201).send(await sandboxes.create(request.body as S.NewSandbox));
  app.post('/v2/sandboxes', create, createHandler);
  app.post('/sandboxes', create, createHandler);

  app.get('/v2/sandboxes', { schema: { querystring: S.ListQuery, response: { 200: Type.Array(S.ListedSandbox) } } }, async (request, reply) => {
    const query = request.query as S.ListQuery;
    const { page, next } = listPage(sandboxes.all(), query);
    if (next !== undefined) void reply.header('x-next-token', next);
    return page;
  });

  // The deprecated list: running sandboxes only, no pagination.
  app.get('/sandboxes', { schema: { querystring: Type.Object({ metadata: Type.Optional(Type.String({ maxLength: 8192 })) }), response: { 200: Type.Array(S.ListedSandbox) } } }, async (request) => {
    const { metadata } = request.query as { metadata?: string };
    const wanted = metadataQuery(metadata);
    return sandboxes.all().filter((s) => s.state === 'running' && matches(s, wanted));
  });

  app.get('/sandboxes/:sandboxID', { schema: { params: S.SandboxIdParams, response: { 200: S.SandboxDetail } } }, async (request) => sandboxes.detail((request as IdRequest).params.sandboxID));

  app.delete('/sandboxes/:sandboxID', { schema: { params: S.SandboxIdParams } }, async (request, reply) => {
    await sandboxes.kill((request as IdRequest).params.sandboxID);
    return reply.code(204).send();
  });

  app.post('/sandboxes/:sandboxID/timeout', { schema: { params: S.SandboxIdParams, body: S.TimeoutBody } }, async (request, reply) => {
    await sandboxes.setTimeout((request as IdRequest).params.sandboxID, (request.body as { timeout: number }).timeout);
    return reply.code(204).send();
  });

  app.post('/sandboxes/:sandboxID/refreshes', { schema: { params: S.SandboxIdParams, body: Type.Optional(S.RefreshBody) } }, async (request, reply) => {
    await sandboxes.refresh((request as IdRequest).params.sandboxID, (request.body as { duration?: number } | undefined)?.duration ?? DEFAULT_TIMEOUT_SEC);
    return reply.code(204).send();
  });

  app.post('/sandboxes/:sandboxID/pause', { schema: { params: S.SandboxIdParams, body: Type.Optional(S.PauseBody) } }, async (request, reply) => {
    if ((request.body as { memory?: boolean } | undefined)?.memory === false) throw badRequest('a pause without memory is not supported by shoal: a pause always keeps memory');
    const id = (request as IdRequest).params.sandboxID;
    if (!(await sandboxes.pause(id))) throw conflict(`sandbox ${id} is already paused`);
    return reply.code(204).send();
  });

  const connect = async (id: string, body: { timeout?: number; memory?: boolean } | undefined, mustBePaused: boolean): Promise<{ sandbox: S.Sandbox; resumed: boolean }> => {
    if (body?.memory === false) throw badRequest('a resume without memory (a cold boot) is not supported by shoal');
    return sandboxes.connect(id, body?.timeout ?? DEFAULT_TIMEOUT_SEC, { mustBePaused });
  };
  const connectRoute = { schema: { params: S.SandboxIdParams, body: Type.Optional(S.ConnectBody), response: { 200: S.Sandbox, 201: S.Sandbox } } };
  const connectHandler = async (request: { params: unknown; body: unknown }, reply: { code(n: number): { send(v: unknown): unknown } }): Promise<unknown> => {
    const { sandbox, resumed } = await connect((request.params as { sandboxID: string }).sandboxID, request.body as { timeout?: number } | undefined, false);
    return reply.code(resumed ? 201 : 200).send(sandbox);
  };
  app.post('/v2/sandboxes/:sandboxID/connect', connectRoute, connectHandler);
  app.post('/sandboxes/:sandboxID/connect', connectRoute, connectHandler);

  // The older resume: only a paused sandbox (a running one is E2B's 409).
  app.post('/sandboxes/:sandboxID/resume', { schema: { params: S.SandboxIdParams, body: Type.Optional(S.ResumeBody), response: { 201: S.Sandbox } } }, async (request, reply) => {
    const { sandbox } = await connect((request as IdRequest).params.sandboxID, request.body as { timeout?: number } | undefined, true);
    return reply.code(201).send(sandbox);
  });

  app.post('/sandboxes/:sandboxID/fork', { schema: { params: S.SandboxIdParams, body: Type.Optional(S.ForkBody), response: { 201: Type.Array(S.ForkResult) } } }, async (request, reply) => {
    const body = (request.body ?? {}) as { count?: number; timeout?: number };
    return reply.code(201).send(await sandboxes.fork((request as IdRequest).params.sandboxID, body.count ?? 1, body.timeout ?? DEFAULT_TIMEOUT_SEC));
  });
}

/** The SDK's metadata query: `k=v&k2=v2` whose keys and values are URL-encoded once more. */
export function metadataQuery(raw: string | undefined): Array<[string, string]> {
  if (raw === undefined || raw === '') return [];
  const out: Array<[string, string]> = [];
  for (const [k, v] of new URLSearchParams(raw)) {
    try {
      out.push([decodeURIComponent(k), decodeURIComponent(v)]);
    } catch {
      throw badRequest(`malformed metadata query: ${k}`);
    }
  }
  return out;
}

function matches(s: S.ListedSandbox, wanted: Array<[string, string]>): boolean {
  return wanted.every(([k, v]) => s.metadata[k] === v);
}

const MAX_PAGE = 100;

/** Code-unit order, the same the cursor comparison below uses (localeCompare is not). */
const compare = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Filtering, order and pagination of GET /v2/sandboxes. The next token is a cursor (the last
 * item's start time and id), not an offset, so sandboxes created or killed between pages do not
 * shift the pages that follow.
 */
export function listPage(all: S.ListedSandbox[], query: S.ListQuery): { page: S.ListedSandbox[]; next?: string } {
  const wanted = metadataQuery(query.metadata);
  const states = query.state?.split(',') ?? ['running', 'paused'];
  let after: number | undefined;
  if (query.startedAfter !== undefined) {
    after = Date.parse(query.startedAfter);
    if (Number.isNaN(after)) throw badRequest('startedAfter must be a date-time');
  }
  const limit = query.limit === undefined ? MAX_PAGE : Number(query.limit);
  if (limit < 1 || limit > MAX_PAGE) throw badRequest(`limit must be 1 to ${MAX_PAGE}`);
  const desc = query.order !== 'asc';
  const key = (s: S.ListedSandbox): string => `${s.startedAt}|${s.sandboxID}`;
  let cursor: string | undefined;
  if (query.nextToken !== undefined) {
    cursor = Buffer.from(query.nextToken, 'base64url').toString('utf8');
    if (!/^[0-9TZ:.-]{10,40}\|[a-zA-Z0-9_.-]{1,128}$/.test(cursor)) throw badRequest('malformed nextToken');
  }
  const rows = all
    .filter((s) => states.includes(s.state) && matches(s, wanted))
    .filter((s) => after === undefined || Date.parse(s.startedAt) >= after)
    .filter((s) => query.template === undefined || s.templateID === query.template || s.alias === query.template)
    .sort((a, b) => (desc ? compare(key(b), key(a)) : compare(key(a), key(b))))
    .filter((s) => cursor === undefined || (desc ? key(s) < cursor : key(s) > cursor));
  const page = rows.slice(0, limit);
  const next = rows.length > limit ? Buffer.from(key(page[page.length - 1]!)).toString('base64url') : undefined;
  return next === undefined ? { page } : { page, next };
}
