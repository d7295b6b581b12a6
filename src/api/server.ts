/**
 * The HTTP API of `shoal serve` (fastify): token auth, the routes of issue 16, every request
 * validated against the schemas in schemas.ts (which also make the OpenAPI document), and one
 * error shape. It reaches VMs only through the Core it is given.
 */
import crypto from 'node:crypto';
import os from 'node:os';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import fastifySwagger, { type SwaggerTransform } from '@fastify/swagger';
import fastifyWebsocket from '@fastify/websocket';
import { Type } from '@sinclair/typebox';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { parseImage } from '../container/image-ref';
import { parsePublish } from '../network/publish';
import { FilesError } from '../host/files-client';
import { containerPathComponents } from '../protocol/files';
import { ShoalError } from '../util/errors';
import type { Core, ExecSpec, OnProgress, RemoteProcess, SandboxSpec, VmView } from './core';
import { HostProxy, serverWithHostProxy } from './e2b/host-proxy';
import { e2bApiPlugin, e2bSandboxes, type E2bApiOptions } from './e2b/plugin';
import { ApiError, firstLine, toApiError, type ErrorCode } from './errors';
import { readFacts, writeFacts, type ApiFacts } from './facts';
import { PausedSandboxes, type PausedSandbox } from './paused';
import { resolveArchiveImage } from './image-dirs';
import { LogFollower, readLog } from './log-reader';
import { nativeTag, OutputCollector, ProcessTable, type ApiProcess, type ProcessLimits } from './processes';
import type { EventRing, StoredEvent } from './ring';
import * as S from './schemas';
import { isEnvdUrl, registerEnvd } from './e2b/envd/plugin';

export const API_VERSION = '0.1.0';

/** For routes whose body is all optional: no body at all (curl -X POST) is the empty object. */
async function emptyBodyAsObject(request: FastifyRequest): Promise<void> {
  if (request.body === undefined || request.body === null) request.body = {};
}

export interface ServerOptions {
  token: string;
  /** Largest JSON body (bytes). */
  bodyLimit?: number;
  /** Largest file a PUT or GET moves (bytes). */
  maxFileBytes?: number;
  /** Cap of stdout and of stderr in a buffered exec reply (bytes each). */
  execOutputCap?: number;
  /** Largest stdin body (bytes). */
  stdinLimit?: number;
  /** Default sandbox lifetime when create gives none (seconds). */
  defaultTimeoutSec?: number;
  processLimits?: ProcessLimits;
  /** How often expired sandboxes are looked for (ms); 0: never. */
  sweepMs?: number;
  logger?: boolean;
  /** Directories whose archives may be images (docker-archive:PATH, oci-archive:PATH); none by default. */
  imageDirs?: readonly string[];
  /** E2B's sandbox API at /e2b (src/api/e2b/); absent: not served. */
  e2b?: E2bApiOptions;
  /** How often an SSE stream gets a comment line while it has nothing else to say (ms); 0: never. */
  sseHeartbeatMs?: number;
}

/** Paths under /e2b have their own auth (E2B's API key, envd's per-sandbox token). */
export const E2B_PREFIX = '/e2b';
const isE2bPath = (url: string): boolean => url === E2B_PREFIX || url.startsWith(`${E2B_PREFIX}/`) || url.startsWith(`${E2B_PREFIX}?`);

export const LIMITS = {
  bodyLimit: 1024 * 1024,
  maxFileBytes: 1024 * 1024 * 1024,
  execOutputCap: 1024 * 1024,
  stdinLimit: 1024 * 1024,
  defaultTimeoutSec: 300,
};

/** The command a sandbox created without one runs: it idles, ready for exec. */
export const IDLE_COMMAND = ['sleep', '2147483647'];

/** A comment line this often on every SSE stream: proxies and clients then see it alive while it is quiet. */
export const SSE_HEARTBEAT_MS = 15_000;

const SSE_HEADERS = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-accel-buffering': 'no', connection: 'keep-alive' };

const errors = { '4xx': S.ref(S.ErrorReply), '5xx': S.ref(S.ErrorReply) };
const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) }, { additionalProperties: false });
const PidParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }), pid: Type.String({ pattern: '^[0-9]{1,9}$' }) }, { additionalProperties: false });
const Token = Type.Optional(Type.String({ maxLength: 512 }));
const PathQuery = Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096 }), access_token: Token }, { additionalProperties: false });

/** A route as registered (for the test that every one is in the OpenAPI document). */
export interface RegisteredRoute {
  method: string;
  url: string;
  hidden: boolean;
  websocket: boolean;
}

const registered = new WeakMap<FastifyInstance, RegisteredRoute[]>();

/** Every route buildServer registered on app, in order, HEAD included. */
export function registeredRoutes(app: FastifyInstance): RegisteredRoute[] {
  return [...(registered.get(app) ?? [])];
}

/**
 * A route whose body is streamed raw (stdin, a file's bytes) has no JSON schema to validate it
 * with; this shows its body in the OpenAPI document all the same (@fastify/swagger's
 * per-route transform changes the document only, not validation).
 */
function rawBodyDoc(): { swaggerTransform: SwaggerTransform } {
  return {
    swaggerTransform: ({ schema, url }) => ({
      schema: { ...schema, body: { content: { 'application/octet-stream': { schema: { type: 'string', format: 'binary' } } } } },
      url,
    }),
  };
}

/**
 * @fastify/websocket marks its routes hidden (their GET answers only an upgrade); the terminal
 * route is part of the API all the same, so the document shows it, with the upgrade's answer.
 */
function websocketDoc(description: string): { swaggerTransform: SwaggerTransform } {
  return {
    swaggerTransform: ({ schema, url }) => ({
      schema: { ...schema, hide: false, description, response: { 101: { description: 'Switching Protocols: the WebSocket is open' }, ...errors } },
      url,
    }),
  };
}

export async function buildServer(core: Core, options: ServerOptions): Promise<FastifyInstance> {
  const limits = { ...LIMITS, ...options };
  const e2b = options.e2b ? e2bSandboxes(core, options.e2b) : undefined;
  // --domain: sandbox hosts (E2B's getHost) are proxied before fastify routes anything.
  const hostProxy = e2b && options.e2b?.domain ? new HostProxy(core, e2b, options.e2b.domain) : undefined;
  const app = Fastify({
    ...(hostProxy ? { serverFactory: serverWithHostProxy(hostProxy) } : {}),
    logger: options.logger ?? false,
    // Streams (SSE, WebSocket) would otherwise hold a closing server open.
    forceCloseConnections: true,
    bodyLimit: limits.bodyLimit,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: true, allErrors: false } },
  });
  const routes: RegisteredRoute[] = [];
  registered.set(app, routes);
  app.addHook('onRoute', (route) => {
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    const schema = route.schema as { hide?: boolean } | undefined;
    const websocket = (route as { websocket?: boolean }).websocket === true;
    // @fastify/websocket hides its routes from the document; ptyDoc() shows them again.
    for (const method of methods) routes.push({ method, url: route.url, hidden: schema?.hide === true && !websocket, websocket });
  });
  const processes = new ProcessTable(options.processLimits);
  const heartbeatMs = options.sseHeartbeatMs ?? SSE_HEARTBEAT_MS;
  const tokenBytes = Buffer.from(options.token);

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'shoal API', version: API_VERSION, description: 'Sandboxes (microVMs running a container), their processes, files, snapshots and forks.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => String(json.$id ?? `def-${i}`) },
  });
  await app.register(fastifyWebsocket, { options: { maxPayload: 1024 * 1024 } });
  for (const schema of S.NAMED_SCHEMAS) app.addSchema(schema);

  // ---- auth, errors ---------------------------------------------------------------------

  app.addHook('onRequest', async (request) => {
    // E2B's API checks its own key; envd's calls carry the sandbox's own token (or a signature),
    // checked in src/api/e2b/envd/.
    if (isE2bPath(request.url) || isEnvdUrl(request.url)) return;
    const header = request.headers.authorization;
    let given: string | undefined;
    // The scheme is case-insensitive (RFC 7235), one or more spaces before the credentials.
    const bearer = typeof header === 'string' ? /^bearer +(\S+) *$/i.exec(header) : null;
    if (bearer) given = bearer[1];
    else if (request.method === 'GET') {
      const query = request.query as Record<string, unknown>;
      if (typeof query.access_token === 'string') given = query.access_token;
    }
    if (given === undefined) throw new ApiError('unauthorized', 'missing token: send Authorization: Bearer TOKEN');
    const bytes = Buffer.from(given);
    if (bytes.length !== tokenBytes.length || !crypto.timingSafeEqual(bytes, tokenBytes)) throw new ApiError('unauthorized', 'wrong token');
  });

  app.setErrorHandler((err, _request, reply) => {
    const apiError = classify(err);
    if (apiError.code === 'internal' && options.logger) app.log.error(err);
    void reply.code(apiError.status).send({ error: { code: apiError.code, message: apiError.message } });
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({ error: { code: 'not_found', message: `no route ${request.method} ${request.url.split('?')[0]}` } });
  });

  // ---- helpers --------------------------------------------------------------------------

  const paused = new PausedSandboxes(core);
  const vmOf = (id: string): VmView => {
    const vm = core.find(id);
    if (vm) return vm;
    if (paused.find(id)) throw new ApiError('conflict', `sandbox ${id} is paused: resume it first (POST /v1/sandboxes/${id}/resume)`);
    throw new ApiError('not_found', `no such sandbox: ${id}`);
  };
  const pausedSandboxOf = (p: PausedSandbox): S.Sandbox => ({ sandboxId: p.sandboxId, name: p.name, state: 'paused', image: p.image, cpus: p.cpus, memoryMiB: p.memoryMiB, createdAt: p.createdAt, expiresAt: null, metadata: p.metadata, parentId: p.parentId });
  const sandboxOf = (vm: VmView): S.Sandbox => {
    const facts = readFacts(core.vmDir(vm.id));
    return { sandboxId: vm.id, name: vm.name, state: vm.status, image: vm.image, cpus: vm.cpus, memoryMiB: vm.memoryMiB, createdAt: vm.createdAt, expiresAt: facts.expiresAt, metadata: facts.metadata, parentId: facts.parentId };
  };
  const expiry = (timeoutSec: number): string => new Date(Date.now() + timeoutSec * 1000).toISOString();
  const removing = new Set<string>();
  const removeSandbox = async (id: string): Promise<void> => {
    if (removing.has(id)) return;
    removing.add(id);
    try {
      processes.forget(id);
      await core.remove(id);
    } finally {
      removing.delete(id);
    }
  };
  const randomName = (prefix: string): string => `${prefix}-${crypto.randomBytes(4).toString('hex')}`;

  // ---- routes ---------------------------------------------------------------------------

  await registerEnvd(app, { core, maxFileBytes: limits.maxFileBytes });

  app.get('/v1/health', { schema: { response: { 200: S.ref(S.Health), ...errors } } }, async () => ({ status: 'ok' as const, version: API_VERSION }));

  app.get('/v1/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  app.post('/v1/sandboxes', {
    schema: {
      description: 'Creates a sandbox and answers once it runs. With `Accept: text/event-stream` the answer is 200 with a stream instead: `progress` events ({stage, message}) while the VM boots or restores, then one `sandbox` event (the Sandbox) or one `error` event ({code, message}), and the stream ends.',
      body: S.ref(S.CreateSandbox),
      response: {
        201: S.ref(S.Sandbox),
        200: { description: 'text/event-stream (Accept: text/event-stream): events progress, then sandbox or error', content: { 'text/event-stream': { schema: Type.String() } } },
        ...errors,
      },
    },
  }, async (request, reply) => {
    const body = request.body as S.CreateSandbox;
    if ((body.image === undefined) === (body.snapshot === undefined)) throw new ApiError('bad_request', 'give exactly one of image and snapshot');
    if (body.snapshot !== undefined) {
      for (const field of ['cpus', 'memoryMiB', 'env', 'cmd', 'network', 'publish'] as const) {
        if (body[field] !== undefined) throw new ApiError('bad_request', `${field} cannot be given with snapshot (a clone is its snapshot's VM)`);
      }
      if (!core.snapshots().some((s) => s.tag === body.snapshot)) throw new ApiError('not_found', `no such snapshot: ${body.snapshot}`);
    }
    // Host archives only from the operator's image directories (image-dirs.ts), resolved here.
    const image = body.image !== undefined ? resolveArchiveImage(body.image, options.imageDirs ?? []) : undefined;
    if (image !== undefined) {
      try {
        parseImage(image);
        parsePublish(body.publish ?? []);
      } catch (err) {
        throw new ApiError('bad_request', firstLine((err as Error).message));
      }
    }
    const name = body.name ?? randomName('sbx');
    if (core.find(name)) throw new ApiError('conflict', `the name "${name}" is already in use`);
    const spec: SandboxSpec = {
      name,
      ...(image !== undefined ? { image } : {}),
      ...(body.snapshot !== undefined ? { snapshot: body.snapshot } : {}),
      cpus: body.cpus ?? 1,
      memoryMiB: body.memoryMiB ?? 1024,
      env: body.env ?? {},
      cmd: body.cmd ?? IDLE_COMMAND,
      network: body.network ?? 'rootless',
      publish: body.publish ?? [],
    };
    const create = async (onProgress?: OnProgress): Promise<S.Sandbox> => {
      const vm = await core.create(spec, onProgress).catch((err: unknown) => {
        // Input was checked above: what fails now is the VM (boot, image load), unless a racing
        // request took the name.
        if (err instanceof ShoalError && !/already in use/.test(err.message)) throw new ApiError('unavailable', firstLine(err.message));
        throw err;
      });
      const parent = body.snapshot !== undefined ? core.snapshots().find((s) => s.tag === body.snapshot)?.parent ?? null : null;
      // Booted from an image (an image-cache snapshot is taken before any exec): its guest keeps
      // no process yet, so its first exec need not ask. A clone of a snapshot may.
      if (body.snapshot === undefined) processes.nothingKept(vm.id);
      writeFacts(core.vmDir(vm.id), { metadata: body.metadata ?? {}, expiresAt: expiry(body.timeoutSec ?? limits.defaultTimeoutSec), parentId: parent });
      return sandboxOf(vm);
    };
    if (!wantsEventStream(request)) return reply.code(201).send(await create());
    // The stream: progress as the core reports it, then the sandbox or the error. A client that
    // goes away does not stop the create (the sandbox then expires as any other).
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, SSE_HEADERS);
    const stopHeartbeat = sseHeartbeat(res, heartbeatMs);
    let id = 0;
    const send = (event: string, data: unknown): void => {
      if (!res.writableEnded && !res.destroyed) res.write(`id: ${++id}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    try {
      send('sandbox', await create((progress) => send('progress', { stage: progress.stage, message: firstLine(progress.message) })));
    } catch (err) {
      const e = classify(err);
      send('error', { code: e.code, message: e.message });
    } finally {
      stopHeartbeat();
      if (!res.writableEnded) res.end();
    }
    return reply;
  });

  app.get('/v1/sandboxes', {
    schema: {
      description: 'Lists sandboxes (also those made with the shoal CLI). Metadata filters, all of which must match: `metadata.KEY=VALUE` (one parameter per key), or `metadata=` with URL-encoded `KEY=VALUE` pairs joined by `&` (as E2B spells it: `?metadata=user%3Dalice%26env%3Ddev`).',
      querystring: Type.Object({
        metadata: Type.Optional(Type.String({ maxLength: 4096, description: 'URL-encoded KEY=VALUE pairs joined by &; every pair must match' })),
        access_token: Token,
      }, { additionalProperties: false, patternProperties: { '^metadata\\..{1,128}$': Type.String({ maxLength: 1024, description: 'metadata.KEY=VALUE: the sandbox\'s metadata KEY must be VALUE' }) } }),
      response: { 200: Type.Array(S.ref(S.Sandbox)), ...errors },
    },
  }, async (request) => {
    const query = request.query as Record<string, string>;
    const filters = Object.entries(query).filter(([k]) => k.startsWith('metadata.')).map(([k, v]) => [k.slice(9), v] as const);
    if (query.metadata !== undefined) for (const [k, v] of new URLSearchParams(query.metadata)) filters.push([k, v]);
    const running = core.list();
    const names = new Set(running.map((vm) => vm.name));
    const all = [...running.map(sandboxOf), ...paused.list().filter((p) => !names.has(p.name)).map(pausedSandboxOf)];
    return all.filter((s) => filters.every(([k, v]) => s.metadata[k] === v));
  });

  app.get('/v1/sandboxes/:id', { schema: { params: IdParams, response: { 200: S.ref(S.Sandbox), ...errors } } }, async (request) => {
    const id = (request.params as { id: string }).id;
    const vm = core.find(id);
    if (vm) return sandboxOf(vm);
    const p = paused.find(id);
    if (p) return pausedSandboxOf(p);
    throw new ApiError('not_found', `no such sandbox: ${id}`);
  });

  app.delete('/v1/sandboxes/:id', { schema: { description: 'Removes a sandbox: kills its VM, or forgets a paused one (and its snapshot).', params: IdParams, response: { 204: Type.Null(), ...errors } } }, async (request, reply) => {
    const id = (request.params as { id: string }).id;
    const vm = core.find(id);
    const p = vm ? undefined : paused.find(id);
    if (p) await paused.forget(p);
    else await removeSandbox(vmOf(id).id);
    return reply.code(204).send();
  });

  app.post('/v1/sandboxes/:id/pause', {
    schema: {
      description: 'Pauses a running sandbox: a memory + disk snapshot, then its VM goes (no RAM, no CPU held). It keeps its name, metadata and parent; it does not expire while paused. E2B\'s sandboxes pause through /e2b. Answers the sandbox, state `paused`.',
      params: IdParams,
      body: Type.Optional(S.ref(S.Pause)),
      response: { 200: S.ref(S.Sandbox), ...errors },
    },
    preValidation: emptyBodyAsObject,
  }, async (request) => {
    const vm = vmOf((request.params as { id: string }).id);
    processes.forget(vm.id);
    return pausedSandboxOf(await paused.pause(vm));
  });

  app.post('/v1/sandboxes/:id/resume', {
    schema: {
      description: 'Resumes a paused sandbox from its snapshot, under the same name, with its processes, files and memory as they were (a new VM: the sandboxId is new). It expires `timeoutSec` from now (default as for a new sandbox).',
      params: IdParams,
      body: Type.Optional(S.ref(S.Resume)),
      response: { 200: S.ref(S.Sandbox), ...errors },
    },
    preValidation: emptyBodyAsObject,
  }, async (request) => {
    const id = (request.params as { id: string }).id;
    const running = core.find(id);
    if (running) throw new ApiError('conflict', `sandbox ${id} is ${running.status}, not paused`);
    const p = paused.find(id);
    if (!p) throw new ApiError('not_found', `no such sandbox: ${id}`);
    const timeoutSec = (request.body as { timeoutSec?: number } | undefined)?.timeoutSec ?? limits.defaultTimeoutSec;
    return sandboxOf(await paused.resume(p, timeoutSec));
  });

  app.post('/v1/sandboxes/:id/timeout', { schema: { params: IdParams, body: S.ref(S.SetTimeout), response: { 200: S.ref(S.Sandbox), ...errors } } }, async (request) => {
    const vm = vmOf((request.params as { id: string }).id);
    const facts = readFacts(core.vmDir(vm.id));
    writeFacts(core.vmDir(vm.id), { ...facts, expiresAt: expiry((request.body as { timeoutSec: number }).timeoutSec) });
    return sandboxOf(vm);
  });

  // ---- processes ------------------------------------------------------------------------

  app.post('/v1/sandboxes/:id/exec', {
    schema: {
      params: IdParams,
      body: S.ref(S.Exec),
      response: { 200: { description: 'application/json: the ExecResult; text/event-stream: events start, stdout, stderr, exit (each with an id)', content: { 'application/json': { schema: S.ref(S.ExecResult) }, 'text/event-stream': { schema: Type.String() } } }, ...errors },
    },
  }, async (request, reply) => {
    const vm = vmOf((request.params as { id: string }).id);
    const body = request.body as S.Exec;
    if (body.vm === true && body.user !== undefined) throw new ApiError('bad_request', 'user applies to commands in the container, not with vm: true');
    const spec: ExecSpec = {
      argv: typeof body.cmd === 'string' ? ['/bin/sh', '-c', body.cmd] : body.cmd,
      env: body.env ?? {},
      vm: body.vm === true,
      stdin: body.stdin === true,
      ...(body.cwd !== undefined ? { cwd: body.cwd } : {}),
      ...(body.user !== undefined ? { user: body.user } : {}),
    };
    // The guest's kept processes first (after a restart of this server): their pids stay theirs.
    await processes.sync(vm.id, core);
    // Checked and taken in one step, before the await: concurrent requests cannot all pass.
    const slot = processes.reserve(vm.id);
    // Kept by the guest agent too, so it outlives this server and a pause (processes.ts).
    spec.keep = nativeTag(slot.pid, spec);
    const streaming = wantsEventStream(request);
    const collector = streaming ? undefined : new OutputCollector(limits.execOutputCap);
    const started = Date.now();
    let remote: RemoteProcess;
    try {
      remote = await core.exec(vm.id, spec);
    } catch (err) {
      slot.release();
      throw err;
    }
    const process = processes.add(slot, spec, remote, { ...(body.timeoutSec !== undefined ? { timeoutSec: body.timeoutSec } : {}), ...(collector ? { collector } : {}) });
    if (streaming) {
      reply.hijack();
      reply.raw.writeHead(200, SSE_HEADERS);
      await streamRing(reply.raw, process.ring, 0, heartbeatMs);
      return reply;
    }
    const end = await process.finished;
    if ('error' in end) throw new ApiError('conflict', end.error);
    return { pid: process.pid, exitCode: end.exitCode, signal: end.signal, stdout: collector!.stdout, stderr: collector!.stderr, truncated: collector!.truncated, timedOut: process.timedOut, durationMs: Date.now() - started };
  });

  const processOf = async (request: FastifyRequest): Promise<ApiProcess> => {
    const params = request.params as { id: string; pid: string };
    const vm = vmOf(params.id);
    await processes.sync(vm.id, core);
    return processes.get(vm.id, Number(params.pid));
  };

  app.get('/v1/sandboxes/:id/processes', { schema: { params: IdParams, response: { 200: Type.Array(S.ref(S.ProcessInfo)), ...errors } } }, async (request) => {
    const vm = vmOf((request.params as { id: string }).id);
    await processes.sync(vm.id, core);
    return processes.list(vm.id).map((p) => p.info());
  });

  app.get('/v1/sandboxes/:id/processes/:pid/events', {
    schema: {
      params: PidParams,
      querystring: Type.Object({ lastEventId: Type.Optional(Type.String({ pattern: '^[0-9]{1,12}$' })), access_token: Token }, { additionalProperties: false }),
      headers: Type.Object({ 'last-event-id': Type.Optional(Type.String({ pattern: '^[0-9]{1,12}$' })) }),
      response: { 200: { description: 'text/event-stream: the events after Last-Event-ID', content: { 'text/event-stream': { schema: Type.String() } } }, ...errors },
    },
  }, async (request, reply) => {
    const process = await processOf(request);
    const from = Number((request.headers['last-event-id'] as string | undefined) ?? (request.query as { lastEventId?: string }).lastEventId ?? 0);
    reply.hijack();
    reply.raw.writeHead(200, SSE_HEADERS);
    await streamRing(reply.raw, process.ring, from, heartbeatMs);
    return reply;
  });

  app.post('/v1/sandboxes/:id/processes/:pid/signal', { schema: { params: PidParams, body: S.ref(S.Signal), response: { 204: Type.Null(), ...errors } } }, async (request, reply) => {
    const process = await processOf(request);
    const raw = (request.body as { signal: string }).signal;
    const signal = raw.startsWith('SIG') ? raw : `SIG${raw}`;
    if ((os.constants.signals as Record<string, number>)[signal] === undefined) throw new ApiError('bad_request', `unknown signal ${raw}`);
    if (!process.running) throw new ApiError('conflict', `process ${process.pid} has ended`);
    process.remote.signal(signal);
    return reply.code(204).send();
  });

  // Raw bodies (stdin, file contents) are streamed, whatever their content type.
  await app.register(async (raw) => {
    raw.removeAllContentTypeParsers();
    raw.addContentTypeParser('*', (_request, payload, done) => done(null, payload));

    raw.post('/v1/sandboxes/:id/processes/:pid/stdin', {
      config: rawBodyDoc(),
      schema: { params: PidParams, querystring: Type.Object({ eof: Type.Optional(Type.Union([Type.Literal('1'), Type.Literal('0'), Type.Literal('true'), Type.Literal('false')])) }, { additionalProperties: false }), response: { 204: Type.Null(), ...errors } },
    }, async (request, reply) => {
      const process = await processOf(request);
      if (!process.spec.stdin) throw new ApiError('conflict', `process ${process.pid} was started without stdin (exec with "stdin": true)`);
      if (!process.running) throw new ApiError('conflict', `process ${process.pid} has ended`);
      const data = await readLimited(request.body as Readable | undefined, limits.stdinLimit);
      if (data.length > 0) await process.remote.writeStdin(data);
      const eof = (request.query as { eof?: string }).eof;
      if (eof === '1' || eof === 'true') process.remote.endStdin();
      return reply.code(204).send();
    });

    raw.put('/v1/sandboxes/:id/files', { config: rawBodyDoc(), schema: { params: IdParams, querystring: PathQuery, response: { 200: S.ref(S.FileEntry), ...errors } } }, async (request) => {
      const vm = vmOf((request.params as { id: string }).id);
      const path = containerPath((request.query as { path: string }).path);
      const body = request.body as Readable | undefined;
      const declared = Number(request.headers['content-length'] ?? 0);
      if (declared > limits.maxFileBytes) throw new ApiError('payload_too_large', `the body is larger than ${limits.maxFileBytes} bytes`);
      return core.files.write(vm.id, path, body ?? emptyBody(), limits.maxFileBytes);
    });
  });

  // ---- files ----------------------------------------------------------------------------

  app.get('/v1/sandboxes/:id/files', {
    schema: { params: IdParams, querystring: PathQuery, response: { 200: { description: 'the file\'s bytes', content: { 'application/octet-stream': { schema: Type.String({ format: 'binary' }) } } }, ...errors } },
  }, async (request, reply) => {
    const vm = vmOf((request.params as { id: string }).id);
    const { entry, body } = await core.files.read(vm.id, containerPath((request.query as { path: string }).path), limits.maxFileBytes);
    void reply.header('content-type', 'application/octet-stream').header('x-file-size', String(entry.size));
    return reply.send(body);
  });

  app.delete('/v1/sandboxes/:id/files', { schema: { params: IdParams, querystring: PathQuery, response: { 204: Type.Null(), ...errors } } }, async (request, reply) => {
    const vm = vmOf((request.params as { id: string }).id);
    await core.files.remove(vm.id, containerPath((request.query as { path: string }).path));
    return reply.code(204).send();
  });

  app.get('/v1/sandboxes/:id/fs/list', {
    schema: { params: IdParams, querystring: PathQuery, response: { 200: Type.Object({ entries: Type.Array(S.ref(S.FileEntry)), truncated: Type.Boolean() }, { additionalProperties: false }), ...errors } },
  }, async (request) => {
    const vm = vmOf((request.params as { id: string }).id);
    return core.files.list(vm.id, containerPath((request.query as { path: string }).path));
  });

  app.get('/v1/sandboxes/:id/fs/stat', { schema: { params: IdParams, querystring: PathQuery, response: { 200: S.ref(S.FileEntry), ...errors } } }, async (request) => {
    const vm = vmOf((request.params as { id: string }).id);
    return core.files.stat(vm.id, containerPath((request.query as { path: string }).path));
  });

  app.post('/v1/sandboxes/:id/fs/mkdir', {
    schema: { params: IdParams, body: S.ref(S.PathBody), response: { 200: Type.Object({ created: Type.Boolean() }, { additionalProperties: false }), ...errors } },
  }, async (request) => {
    const vm = vmOf((request.params as { id: string }).id);
    return { created: await core.files.mkdir(vm.id, containerPath((request.body as { path: string }).path)) };
  });

  app.post('/v1/sandboxes/:id/fs/rename', { schema: { params: IdParams, body: S.ref(S.RenameBody), response: { 200: S.ref(S.FileEntry), ...errors } } }, async (request) => {
    const vm = vmOf((request.params as { id: string }).id);
    const body = request.body as { from: string; to: string };
    return core.files.rename(vm.id, containerPath(body.from), containerPath(body.to));
  });

  // ---- logs -----------------------------------------------------------------------------

  app.get('/v1/sandboxes/:id/logs', {
    schema: {
      params: IdParams,
      querystring: Type.Object({ follow: Type.Optional(Type.Union([Type.Literal('1'), Type.Literal('0'), Type.Literal('true'), Type.Literal('false')])), access_token: Token }, { additionalProperties: false }),
      response: { 200: Type.Object({ logs: Type.Array(Type.Object({ stream: Type.String(), data: Type.String() })), truncated: Type.Boolean() }), ...errors },
    },
  }, async (request, reply) => {
    const vm = vmOf((request.params as { id: string }).id);
    const follow = ['1', 'true'].includes((request.query as { follow?: string }).follow ?? '');
    if (!follow) {
      const { records, more, error } = readLog(core.logFile(vm.id), limits.execOutputCap);
      if (error !== undefined && records.length === 0) throw new ApiError('conflict', error);
      return { logs: records.map((r) => ({ stream: r.stream, data: r.data.toString('utf8') })), truncated: more || error !== undefined };
    }
    reply.hijack();
    reply.raw.writeHead(200, SSE_HEADERS);
    // undefined while the sandbox may still write; else the state it ended in.
    const ended = (): string | undefined => {
      const now = core.find(vm.id);
      return now && ['running', 'starting', 'creating'].includes(now.status) ? undefined : now?.status ?? 'removed';
    };
    await followLogs(core.logFile(vm.id), ended, reply.raw, 250, heartbeatMs);
    return reply;
  });

  // ---- snapshots, fork ------------------------------------------------------------------

  app.post('/v1/sandboxes/:id/snapshots', { schema: { params: IdParams, body: S.ref(S.SnapshotCreate), response: { 201: S.ref(S.SnapshotCreated), ...errors } } }, async (request, reply) => {
    const vm = vmOf((request.params as { id: string }).id);
    const tag = (request.body as { tag: string }).tag;
    if (core.snapshots().some((s) => s.tag === tag)) throw new ApiError('conflict', `snapshot ${tag} already exists`);
    const result = await core.snapshot(vm.id, tag);
    return reply.code(201).send({ tag: result.tag, parent: vm.id, pauseMs: result.pauseMs });
  });

  app.get('/v1/snapshots', { schema: { response: { 200: Type.Array(S.ref(S.SnapshotInfo)), ...errors } } }, async () => core.snapshots());

  app.delete('/v1/snapshots/:tag', { schema: { params: Type.Object({ tag: Type.String({ minLength: 1, maxLength: 128 }) }, { additionalProperties: false }), response: { 204: Type.Null(), ...errors } } }, async (request, reply) => {
    const tag = (request.params as { tag: string }).tag;
    if (!core.snapshots().some((s) => s.tag === tag)) throw new ApiError('not_found', `no such snapshot: ${tag}`);
    if (paused.backs(tag)) throw new ApiError('conflict', `snapshot ${tag} holds a paused sandbox: resume or delete the sandbox instead`);
    core.removeSnapshot(tag);
    return reply.code(204).send();
  });

  app.post('/v1/sandboxes/:id/fork', { schema: { params: IdParams, body: S.ref(S.Fork), response: { 201: Type.Array(S.ref(S.ForkEntry)), ...errors } } }, async (request, reply) => {
    const vm = vmOf((request.params as { id: string }).id);
    const body = request.body as { count: number; timeoutSec?: number; metadata?: Record<string, string> };
    const stem = `${vm.name.slice(0, 40)}-${crypto.randomBytes(3).toString('hex')}`;
    const names = Array.from({ length: body.count }, (_, i) => `${stem}-${i + 1}`);
    const children = await core.fork(vm.id, names);
    const facts: Omit<ApiFacts, 'expiresAt'> = { metadata: body.metadata ?? readFacts(core.vmDir(vm.id)).metadata, parentId: vm.id };
    const out = children.map((child) => {
      if (child instanceof Error) {
        const e = classify(child);
        return { error: { code: e.code, message: e.message } };
      }
      writeFacts(core.vmDir(child.id), { ...facts, expiresAt: expiry(body.timeoutSec ?? limits.defaultTimeoutSec) });
      return { sandbox: sandboxOf(child) };
    });
    return reply.code(201).send(out);
  });

  // ---- PTY ------------------------------------------------------------------------------

  app.get('/v1/sandboxes/:id/pty', {
    websocket: true,
    config: websocketDoc('A terminal in the sandbox\'s container over a WebSocket (send `Upgrade: websocket`): binary frames carry the terminal\'s input and output both ways; a text frame `{"type":"resize","cols":C,"rows":R}` resizes it; the close reason is `{"exitCode":N}` when the command ends.'),
    schema: {
      params: IdParams,
      querystring: Type.Object({
        cols: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$' })),
        rows: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$' })),
        cmd: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
        access_token: Token,
      }, { additionalProperties: false }),
    },
    preHandler: async (request) => {
      const q = request.query as { cols?: string; rows?: string };
      for (const [k, v] of Object.entries({ cols: q.cols, rows: q.rows })) {
        if (v !== undefined && (Number(v) < 1 || Number(v) > 1000)) throw new ApiError('bad_request', `${k} must be 1 to 1000`);
      }
      const vm = vmOf((request.params as { id: string }).id);
      if (vm.status !== 'running') throw new ApiError('conflict', `sandbox ${vm.id} is ${vm.status}, not running`);
    },
  }, (socket: WebSocket, request: FastifyRequest) => {
    const q = request.query as { cols?: string; rows?: string; cmd?: string };
    const vm = vmOf((request.params as { id: string }).id);
    void runPty(core, vm.id, socket, { cols: Number(q.cols ?? 80), rows: Number(q.rows ?? 24), cmd: q.cmd ?? '/bin/sh' });
  });

  // ---- E2B ------------------------------------------------------------------------------

  if (e2b) await app.register(e2bApiPlugin(core, e2b, options.token, options.logger ?? false), { prefix: E2B_PREFIX });

  // ---- expiry ---------------------------------------------------------------------------

  const sweepMs = options.sweepMs ?? 1000;
  const expiring = new Set<string>();
  if (sweepMs > 0) {
    const timer = setInterval(() => {
      const now = Date.now();
      for (const vm of core.list()) {
        const { expiresAt } = readFacts(core.vmDir(vm.id));
        if (expiresAt === null || Date.parse(expiresAt) > now || expiring.has(vm.id)) continue;
        // An E2B sandbox with autoPause is paused instead of removed (its API does that).
        const handled = e2b?.expired(vm);
        expiring.add(vm.id);
        void (handled === undefined || handled === false ? removeSandbox(vm.id) : handled).catch(() => undefined).finally(() => expiring.delete(vm.id));
      }
    }, sweepMs);
    timer.unref();
    app.addHook('onClose', async () => clearInterval(timer));
  }
  app.addHook('preClose', async () => {
    for (const vm of core.list()) processes.forget(vm.id);
  });
  return app;
}

function wantsEventStream(request: FastifyRequest): boolean {
  return (request.headers.accept ?? '').toLowerCase().includes('text/event-stream');
}

/** One line for every kind of failure a route can meet. */
function classify(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof FilesError) return new ApiError(filesStatus(err.code), err.message);
  if (err instanceof ShoalError) return toApiError(err);
  const e = err as { validation?: Array<{ keyword: string; instancePath: string; message?: string; params: Record<string, unknown> }>; validationContext?: string; code?: string; statusCode?: number; message?: string };
  if (e.validation && e.validation.length > 0) {
    const v = e.validation[0]!;
    const where = `${e.validationContext ?? 'request'}${v.instancePath.replace(/\//g, '.')}`;
    if (v.keyword === 'additionalProperties') return new ApiError('bad_request', `unknown field "${String(v.params.additionalProperty)}" in ${where}`);
    return new ApiError('bad_request', `${where} ${v.message ?? 'is invalid'}`);
  }
  if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new ApiError('payload_too_large', 'the request body is larger than the limit');
  if (e.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new ApiError('bad_request', 'send the body as application/json');
  if (e.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return new ApiError('bad_request', 'the JSON body is empty');
  if (e.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err instanceof SyntaxError) return new ApiError('bad_request', `malformed JSON: ${firstLine(e.message ?? '')}`);
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) return new ApiError(e.statusCode === 413 ? 'payload_too_large' : 'bad_request', firstLine(e.message ?? 'bad request'));
  return toApiError(err);
}

function filesStatus(code: string): ErrorCode {
  switch (code) {
    case 'ENOENT':
      return 'not_found';
    case 'EOUTSIDE':
    case 'EINVAL':
    case 'ELOOP':
    case 'ENAMETOOLONG':
      return 'bad_request';
    case 'EFBIG':
      return 'payload_too_large';
    case 'EIO':
      return 'unavailable';
    default:
      return 'conflict'; // EISDIR, ENOTDIR, EEXIST, ENOTEMPTY, EACCES, ENOCONTAINER, ...
  }
}

function containerPath(value: string): string {
  const parsed = containerPathComponents(value);
  if ('problem' in parsed) throw new ApiError('bad_request', parsed.problem);
  return `/${parsed.components.join('/')}`;
}

async function* emptyBody(): AsyncGenerator<Buffer> {}

/**
 * Reads a raw body of at most `limit` bytes. Past the limit the rest is read and dropped (up to
 * a bound), so the client, which is still sending, gets the 413 instead of a reset connection.
 */
async function readLimited(body: Readable | undefined, limit: number): Promise<Buffer> {
  if (!body) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).length;
    if (size > limit * 16 + 1024 * 1024) {
      body.destroy();
      break;
    }
    if (size <= limit) chunks.push(chunk as Buffer);
  }
  if (size > limit) throw new ApiError('payload_too_large', `the body is larger than ${limit} bytes`);
  return Buffer.concat(chunks);
}

function sseEvent(stored: StoredEvent): string {
  const { type, ...rest } = stored.event;
  return `id: ${stored.id}\nevent: ${type}\ndata: ${JSON.stringify(rest)}\n\n`;
}

/**
 * Writes the ring's events after `from` to an SSE response until the process ends or the client
 * goes. A slow client is waited for (drain); one that fell behind the ring is told how many
 * events it missed (event `gap`). The process never waits for a client.
 */
export async function streamRing(res: ServerResponse, ring: EventRing, from: number, heartbeatMs = SSE_HEARTBEAT_MS): Promise<void> {
  let cursor = from;
  let gone = false;
  const closed = new Promise<void>((resolve) => res.once('close', () => { gone = true; resolve(); }));
  const stopHeartbeat = sseHeartbeat(res, heartbeatMs);
  try {
    while (!gone) {
      const { events, missed } = ring.after(cursor);
      if (missed > 0) res.write(`event: gap\ndata: ${JSON.stringify({ missed })}\n\n`);
      for (const stored of events) {
        if (gone) break;
        cursor = stored.id;
        if (!res.write(sseEvent(stored))) await Promise.race([new Promise((r) => res.once('drain', r)), closed]);
      }
      if (ring.closed && cursor >= ring.lastId) break;
      const wait = ring.waitAfter(cursor);
      await Promise.race([wait.ready, closed]);
      wait.cancel();
    }
  } finally {
    stopHeartbeat();
  }
  if (!gone) res.end();
}

/**
 * Writes an SSE comment line (`: keep-alive`) every ms until the response closes or the
 * returned function is called. A comment is ignored by every SSE client; its job is to keep
 * idle-timeout proxies and clients from taking a quiet stream for a dead one.
 */
export function sseHeartbeat(res: ServerResponse, ms: number): () => void {
  if (!(ms > 0)) return () => undefined;
  const timer = setInterval(() => {
    if (!res.writableEnded && !res.destroyed) res.write(': keep-alive\n\n');
  }, ms);
  timer.unref();
  const stop = (): void => clearInterval(timer);
  res.once('close', stop);
  return stop;
}

/**
 * Follows the container log as SSE until the sandbox stops running (ids count the records sent).
 * The log is the guest's output: records are bounded and checked (log-reader.ts), a corrupt log
 * ends the stream with an `error` event, and a slow client is waited for (drain), so neither a
 * guest nor a client can make this server hold more than one read's worth per follower.
 */
export async function followLogs(file: string, isLive: () => string | undefined, res: ServerResponse, pollMs = 250, heartbeatMs = SSE_HEARTBEAT_MS): Promise<void> {
  const follower = new LogFollower(file);
  let count = 0;
  let gone = false;
  const closed = new Promise<void>((resolve) => res.once('close', () => { gone = true; resolve(); }));
  const stopHeartbeat = sseHeartbeat(res, heartbeatMs);
  try {
    while (!gone) {
      const { records, error } = follower.read(256 * 1024);
      for (const r of records) {
        if (gone) break;
        count += 1;
        if (!res.write(`id: ${count}\nevent: ${r.stream}\ndata: ${JSON.stringify({ data: r.data.toString('utf8') })}\n\n`)) {
          await Promise.race([new Promise((resolve) => res.once('drain', resolve)), closed]);
        }
      }
      if (error !== undefined) {
        if (!gone) res.write(`event: error\ndata: ${JSON.stringify({ message: error })}\n\n`);
        break;
      }
      if (records.length > 0) continue;
      const ended = isLive();
      if (ended !== undefined) {
        if (!gone) res.write(`event: end\ndata: ${JSON.stringify({ state: ended })}\n\n`);
        break;
      }
      await Promise.race([new Promise((resolve) => setTimeout(resolve, pollMs)), closed]);
    }
  } finally {
    stopHeartbeat();
    follower.close();
  }
  if (!gone) res.end();
}

export const PTY_INPUT_HIGH = 256 * 1024;
const PTY_INPUT_LOW = 64 * 1024;

/** Terminal input in order, at the guest's pace, with a bounded queue (see runPty). */
export class PtyInput {
  private queue: Array<{ target: RemoteProcess; data: Buffer }> = [];
  private bytes = 0;
  private writing = false;
  private paused = false;

  constructor(private readonly socket: Pick<WebSocket, 'pause' | 'resume'>) {}

  get queuedBytes(): number {
    return this.bytes;
  }

  push(target: RemoteProcess, data: Buffer): void {
    this.queue.push({ target, data });
    this.bytes += data.length;
    if (this.bytes > PTY_INPUT_HIGH && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    if (!this.writing) void this.pump();
  }

  private async pump(): Promise<void> {
    this.writing = true;
    while (this.queue.length > 0) {
      const { target, data } = this.queue.shift()!;
      try {
        await target.writeStdin(data);
      } catch {
        // the terminal is gone: its end closes the socket
      }
      this.bytes -= data.length;
      if (this.paused && this.bytes < PTY_INPUT_LOW) {
        this.paused = false;
        this.socket.resume();
      }
    }
    this.writing = false;
  }
}

/** A terminal over a WebSocket: binary frames both ways, text frames for resize, exit in the close reason. */
async function runPty(core: Core, id: string, socket: WebSocket, options: { cols: number; rows: number; cmd: string }): Promise<void> {
  // Listen at once: what the client sends while the terminal is being set up (its first
  // command, a resize) is held, up to a bound, and delivered in order once it runs.
  const early: Array<{ data: Buffer; isBinary: boolean }> = [];
  let earlyBytes = 0;
  let remote: RemoteProcess | undefined;
  let closed = false;
  // Input goes to the terminal one write at a time (each waits for the guest's credit), so it
  // keeps its order; what waits is bounded: past PTY_INPUT_HIGH the socket stops being read
  // (TCP pushes back on the client) until the queue is below PTY_INPUT_LOW.
  const input = new PtyInput(socket);
  const deliver = (target: RemoteProcess, data: Buffer, isBinary: boolean): void => {
    if (isBinary) {
      input.push(target, data);
      return;
    }
    try {
      const message = JSON.parse(data.toString()) as { type?: unknown; cols?: unknown; rows?: unknown };
      const ok = (n: unknown): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 1000;
      if (message.type === 'resize' && ok(message.cols) && ok(message.rows)) target.resize(message.cols, message.rows);
    } catch {
      // not JSON: ignored
    }
  };
  socket.on('message', (data: Buffer, isBinary: boolean) => {
    const copy = Buffer.from(data);
    if (remote) {
      deliver(remote, copy, isBinary);
      return;
    }
    earlyBytes += copy.length;
    if (earlyBytes > 1024 * 1024) {
      socket.close(1009, JSON.stringify({ error: 'too much input before the terminal started' }));
      return;
    }
    early.push({ data: copy, isBinary });
  });
  socket.on('close', () => {
    closed = true;
    remote?.close();
  });
  try {
    remote = await core.exec(id, { argv: ['/bin/sh', '-c', options.cmd], env: { TERM: 'xterm-256color' }, vm: false, stdin: true, tty: { cols: options.cols, rows: options.rows } });
  } catch (err) {
    socket.close(1011, JSON.stringify({ error: classify(err).message.slice(0, 100) }));
    return;
  }
  if (closed) {
    remote.close();
    return;
  }
  for (const { data, isBinary } of early.splice(0)) deliver(remote, data, isBinary);
  const running = remote;
  running.onOutput((_stream, data) => new Promise<void>((resolve) => {
    if (socket.readyState !== socket.OPEN) {
      resolve();
      return;
    }
    socket.send(data, { binary: true }, () => resolve());
  }));
  const end = await running.done;
  if (socket.readyState === socket.OPEN) {
    socket.close(1000, JSON.stringify('error' in end ? { exitCode: null, error: end.error.slice(0, 80) } : { exitCode: end.exitCode ?? (end.signal ? 128 + ((os.constants.signals as Record<string, number>)[end.signal] ?? 0) : null) }));
  }
}

export type { FastifyInstance, FastifyReply };
