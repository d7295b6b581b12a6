/**
 * E2B's error replies: `{"code": STATUS, "message": ...}`. The SDK turns 401 into
 * AuthenticationError, 404 into NotFoundError (per route), 409 into "already paused" and so on
 * by the status alone, so the status is what must be right; the message is for people.
 */
import type { FastifyError, FastifyInstance } from 'fastify';
import { ApiError, toApiError } from '../errors';
import { FilesError } from '../../host/files-client';
import { ShoalError } from '../../util/errors';

export class E2bApiError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
    this.name = 'E2bApiError';
  }
}

export const notFound = (what: string): E2bApiError => new E2bApiError(404, what);
export const badRequest = (what: string): E2bApiError => new E2bApiError(400, what);
export const conflict = (what: string): E2bApiError => new E2bApiError(409, what);

/** One status and message for whatever a route threw. */
export function e2bErrorOf(err: unknown): E2bApiError {
  if (err instanceof E2bApiError) return err;
  if (err instanceof ApiError) return new E2bApiError(err.status, err.message);
  if (err instanceof FilesError || err instanceof ShoalError) {
    const api = toApiError(err instanceof FilesError ? new ShoalError(err.message) : err);
    return new E2bApiError(api.status, api.message);
  }
  const e = err as Partial<FastifyError> & { validation?: unknown[] };
  if (e.validation !== undefined) return new E2bApiError(400, `invalid request: ${e.message ?? 'validation failed'}`);
  if (e.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new E2bApiError(413, 'the request body is larger than the limit');
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) return new E2bApiError(e.statusCode, e.message ?? 'bad request');
  const api = toApiError(err);
  return new E2bApiError(api.status, api.message);
}

/** E2B's error shape for every error and unknown route under the plugin's prefix. */
export function installErrorReplies(app: FastifyInstance, log: boolean): void {
  app.setErrorHandler((err, _request, reply) => {
    const e = e2bErrorOf(err);
    if (e.status >= 500 && log) app.log.error(err);
    void reply.code(e.status).send({ code: e.status, message: e.message });
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({ code: 404, message: `no route ${request.method} ${request.url.split('?')[0]}` });
  });
}
