/**
 * envd's HTTP routes (spec/envd/envd.yaml in e2b-dev/E2B): GET /files (download), POST /files
 * (upload: multipart/form-data with one or more `file` parts, or one application/octet-stream
 * body), GET /health. A call is allowed by the sandbox's access token (X-Access-Token, with the
 * sandbox named by E2b-Sandbox-Id) or by a signed URL (signature.ts). The SDK builds signed URLs
 * with `new URL("/files", E2B_SANDBOX_URL)`, which drops the URL's path: they arrive at the
 * server's root `/files` without the sandbox's name, so a signature names its sandbox itself (the
 * one whose token it verifies with). Errors are envd's `{code, message}` with its statuses.
 */
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Core } from '../../core';
import { firstLine } from '../../errors';
import { httpStatusOf } from './errors';
import { containerPath } from './paths';
import { authenticate, e2bSandbox, e2bSandboxes, EnvdAuthError, requireRunning, type EnvdSandbox } from './sandbox-auth';
import { checkSignature, type FileOperation } from './signature';
import { parseUser } from './users';

export interface FilesRouteOptions {
  core: Core;
  /** Largest file one upload or download moves (bytes). */
  maxFileBytes: number;
  /** Largest multipart body (it is parsed in memory). */
  maxMultipartBytes: number;
}

interface FilesQuery {
  path?: string;
  username?: string;
  signature?: string;
  signature_expiration?: string;
}

function queryOf(request: FastifyRequest): FilesQuery {
  const q = request.query as Record<string, unknown>;
  const out: FilesQuery = {};
  for (const key of ['path', 'username', 'signature', 'signature_expiration'] as const) {
    const v = q[key];
    if (v === undefined) continue;
    if (typeof v !== 'string' || v.length > 4096) throw new EnvdAuthError('bad_request', `invalid ${key} parameter`);
    out[key] = v;
  }
  const user = parseUser(out.username);
  if (typeof user === 'object') throw new EnvdAuthError('bad_request', user.problem);
  return out;
}

function header(request: FastifyRequest, name: string): string | undefined {
  const v = request.headers[name];
  return typeof v === 'string' ? v : undefined;
}

/** The sandbox of a /files call: by its token headers, else by its URL's signature. */
function sandboxOfFilesCall(core: Core, request: FastifyRequest, query: FilesQuery, operation: FileOperation): EnvdSandbox {
  if (header(request, 'x-access-token') !== undefined) return authenticate(core, (n) => header(request, n));
  if (query.signature === undefined) throw new EnvdAuthError('unauthenticated', 'missing X-Access-Token header or signature');
  const signed = { path: query.path ?? '', username: query.username, signature: query.signature, expiration: query.signature_expiration };
  const named = header(request, 'e2b-sandbox-id');
  const candidates = named !== undefined ? [e2bSandbox(core, named)] : e2bSandboxes(core);
  let expired = false;
  for (const sandbox of candidates) {
    const check = checkSignature(signed, operation, sandbox.facts.envdAccessToken);
    if (check === 'malformed') throw new EnvdAuthError('bad_request', 'malformed signature or signature_expiration');
    if (check === 'ok') return sandbox;
    if (check === 'expired') expired = true;
  }
  throw new EnvdAuthError('unauthenticated', expired ? 'the signature has expired' : 'invalid signature');
}

function sendError(reply: FastifyReply, err: unknown): void {
  const status = httpStatusOf(err);
  const message = firstLine(err instanceof Error ? err.message : String(err));
  void reply.code(status).type('application/json').send({ code: status, message });
}

/** Yields a body's chunks, refusing more than max bytes in all. */
async function* capped(body: AsyncIterable<Buffer>, max: number): AsyncGenerator<Buffer> {
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > max) throw new EnvdAuthError('bad_request', `the upload is larger than ${max} bytes`);
    yield chunk;
  }
}

export function registerFilesRoutes(app: FastifyInstance, options: FilesRouteOptions): void {
  const { core } = options;
  // Upload bodies are read by the handler as streams (the multipart one with a size cap).
  app.addContentTypeParser(['multipart/form-data', 'application/octet-stream'], (_request, _payload, done) => done(null));

  app.get('/files', async (request, reply) => {
    try {
      const query = queryOf(request);
      const sandbox = sandboxOfFilesCall(core, request, query, 'read');
      requireRunning(sandbox);
      const path = containerPath(query.path);
      const { entry, body } = await core.files.read(sandbox.vm.id, path, options.maxFileBytes);
      if (entry.type === 'dir') {
        body.destroy();
        throw new EnvdAuthError('bad_request', `path ${path} is a directory`);
      }
      const name = path.split('/').pop() ?? 'file';
      void reply
        .header('content-type', 'application/octet-stream')
        .header('content-length', String(entry.size))
        .header('content-disposition', `inline; filename*=UTF-8''${encodeURIComponent(name)}`)
        .send(body);
      return reply;
    } catch (err) {
      sendError(reply, err);
      return reply;
    }
  });

  app.post('/files', async (request, reply) => {
    try {
      const query = queryOf(request);
      const sandbox = sandboxOfFilesCall(core, request, query, 'write');
      requireRunning(sandbox);
      const type = header(request, 'content-type') ?? '';
      const written: Array<{ name: string; type: 'file'; path: string }> = [];
      const record = (p: string): void => { written.push({ name: p.split('/').pop() ?? '', type: 'file', path: p }); };
      if (type.startsWith('application/octet-stream')) {
        const path = containerPath(query.path);
        const encoding = header(request, 'content-encoding');
        let body: AsyncIterable<Buffer> = request.raw;
        if (encoding === 'gzip') body = request.raw.pipe(zlib.createGunzip());
        else if (encoding !== undefined && encoding !== 'identity') throw new EnvdAuthError('bad_request', `unsupported Content-Encoding ${encoding.slice(0, 32)}`);
        await core.files.write(sandbox.vm.id, path, capped(body, options.maxFileBytes), options.maxFileBytes);
        record(path);
      } else if (type.startsWith('multipart/form-data')) {
        const length = Number(header(request, 'content-length') ?? '0');
        if (length > options.maxMultipartBytes) throw new EnvdAuthError('bad_request', `a multipart upload is at most ${options.maxMultipartBytes} bytes (send application/octet-stream for larger files)`);
        // undici's multipart parser (Node's fetch Request), on a body capped as it streams in.
        const capped$ = Readable.toWeb(Readable.from(capped(request.raw, options.maxMultipartBytes))) as ReadableStream<Uint8Array>;
        const form = await new Request('http://envd/files', { method: 'POST', headers: { 'content-type': type }, body: capped$, duplex: 'half' } as RequestInit).formData();
        const parts = form.getAll('file');
        if (parts.length === 0) throw new EnvdAuthError('bad_request', 'no "file" part in the form');
        for (const part of parts) {
          if (typeof part === 'string') throw new EnvdAuthError('bad_request', 'a "file" part is not a file');
          const path = containerPath(query.path ?? part.name, 'path');
          await core.files.write(sandbox.vm.id, path, Readable.from(Buffer.from(await part.arrayBuffer())), options.maxFileBytes);
          record(path);
        }
      } else {
        throw new EnvdAuthError('bad_request', 'send multipart/form-data or application/octet-stream');
      }
      void reply.code(200).send(written);
      return reply;
    } catch (err) {
      sendError(reply, err);
      return reply;
    }
  });
}

/** GET /health: 204 while the named sandbox runs (the SDK probes it after a dropped connection). */
export function registerHealthRoute(app: FastifyInstance, core: Core): void {
  app.get('/health', async (request, reply) => {
    try {
      const sandbox = e2bSandbox(core, header(request, 'e2b-sandbox-id'));
      requireRunning(sandbox);
      void reply.code(204).send();
    } catch (err) {
      sendError(reply, err);
    }
    return reply;
  });
}
