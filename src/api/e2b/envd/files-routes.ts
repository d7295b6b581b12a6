/**
 * envd's HTTP routes (spec/envd/envd.yaml in e2b-dev/E2B): GET /files (download), POST /files
 * (upload: multipart/form-data with one or more `file` parts, or one application/octet-stream
 * body), GET /health. A call is allowed by the sandbox's access token (X-Access-Token, with the
 * sandbox named by E2b-Sandbox-Id) or by a signed URL (signature.ts). The SDK builds signed URLs
 * with `new URL("/files", E2B_SANDBOX_URL)`, which drops the URL's path: they arrive at the
 * server's root `/files` without the sandbox's name, so a signature names its sandbox itself (the
 * one whose token it verifies with). Errors are envd's `{code, message}` with its statuses.
 */
import zlib from 'node:zlib';
import Busboy, { type BusboyFileStream } from '@fastify/busboy';
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
  /** Largest file one upload or download moves (bytes); for a multipart upload, each part. */
  maxFileBytes: number;
}

/** Most parts of one multipart upload (the SDK sends one `file` part per file written). */
export const MAX_MULTIPART_FILES = 100;
/** What the multipart parser holds of a part before its consumer (the guest write) takes it. */
const MULTIPART_PART_BUFFER = 64 * 1024;

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

/**
 * A multipart upload, each `file` part streamed to the guest as it arrives (@fastify/busboy): the
 * parser holds at most MULTIPART_PART_BUFFER of a part and reads the request on only as the
 * guest's write takes it, so nothing of the body piles up here however large. Each part is at most
 * maxFileBytes (over it the part's write fails and the guest drops its temp file), at most
 * MAX_MULTIPART_FILES parts. Resolves with the written paths, in the parts' order, once every
 * write was confirmed; the first failure rejects (the rest of the body is then read and dropped).
 */
function uploadMultipart(request: FastifyRequest, type: string, sandbox: EnvdSandbox, query: FilesQuery, options: FilesRouteOptions): Promise<string[]> {
  return new Promise((resolve, reject) => {
    let failed = false;
    const writes: Array<Promise<string>> = [];
    const parser = Busboy({
      headers: { ...request.headers, 'content-type': type },
      preservePath: true, // the SDK names each part by its full path (busboy would keep only the base name)
      highWaterMark: MULTIPART_PART_BUFFER,
      fileHwm: MULTIPART_PART_BUFFER,
      limits: { fileSize: options.maxFileBytes, files: MAX_MULTIPART_FILES, parts: 2 * MAX_MULTIPART_FILES, fields: MAX_MULTIPART_FILES, fieldSize: 64 * 1024, headerPairs: 64 },
    });
    let current: BusboyFileStream | undefined;
    let finished = false;
    const fail = (err: unknown): void => {
      if (failed) return;
      failed = true;
      // The part in flight ends with the failure, so its write fails (the guest drops its temp
      // file) instead of waiting for bytes that will not come.
      if (current && !current.readableEnded) current.destroy(err instanceof Error ? err : new Error(String(err)));
      request.raw.unpipe(parser);
      request.raw.resume(); // the rest of the body is read and dropped, so the reply can go out
      reject(err);
    };
    parser.on('file', (field: string, stream: BusboyFileStream, filename: string) => {
      current = stream;
      if (failed || field !== 'file') {
        stream.resume();
        return;
      }
      let path: string;
      try {
        path = containerPath(query.path ?? filename, 'path');
      } catch (err) {
        stream.resume();
        fail(err);
        return;
      }
      const write = options.core.files.write(sandbox.vm.id, path, partBody(stream, options.maxFileBytes), options.maxFileBytes).then(() => path);
      write.catch((err: unknown) => {
        stream.resume(); // a write that stopped reading must not stall the parser
        fail(err);
      });
      writes.push(write);
    });
    parser.on('field', () => undefined);
    parser.on('filesLimit', () => fail(new EnvdAuthError('bad_request', `a multipart upload has at most ${MAX_MULTIPART_FILES} files`)));
    parser.on('partsLimit', () => fail(new EnvdAuthError('bad_request', `a multipart upload has at most ${2 * MAX_MULTIPART_FILES} parts`)));
    parser.on('fieldsLimit', () => fail(new EnvdAuthError('bad_request', `a multipart upload has at most ${MAX_MULTIPART_FILES} fields`)));
    parser.on('error', (err: Error) => fail(new EnvdAuthError('bad_request', `malformed multipart body: ${firstLine(err.message)}`)));
    parser.on('finish', () => {
      finished = true;
      if (failed) return;
      if (writes.length === 0) {
        fail(new EnvdAuthError('bad_request', 'no "file" part in the form'));
        return;
      }
      Promise.all(writes).then(resolve, fail);
    });
    request.raw.on('error', fail);
    // A client gone mid-body ('error', or only 'close' without the body's end).
    request.raw.on('close', () => {
      if (!finished && !request.raw.complete) fail(new EnvdAuthError('bad_request', 'the client closed the upload before its end'));
    });
    request.raw.pipe(parser);
  });
}

/** A part's bytes; a part cut at the size limit fails (busboy truncates it and says 'limit'). */
async function* partBody(stream: BusboyFileStream, max: number): AsyncGenerator<Buffer> {
  let over = false;
  stream.on('limit', () => { over = true; });
  for await (const chunk of stream) {
    if (over) break;
    yield chunk as Buffer;
  }
  if (over || stream.truncated) throw new EnvdAuthError('bad_request', `a file of the upload is larger than ${max} bytes`);
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
        for (const p of await uploadMultipart(request, type, sandbox, query, options)) record(p);
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
