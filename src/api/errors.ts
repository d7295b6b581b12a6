/**
 * The API's errors: one status, one machine-readable code, one clear message, sent as
 * `{"error": {"code", "message"}}`. Anything else that escapes a route is a bug (500).
 */
import { ShoalError } from '../util/errors';

export type ErrorCode =
  | 'bad_request'
  | 'unauthorized'
  | 'not_found'
  | 'conflict'
  | 'payload_too_large'
  | 'too_many_requests'
  | 'unavailable'
  | 'internal';

const STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  unauthorized: 401,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  too_many_requests: 429,
  unavailable: 503,
  internal: 500,
};

export class ApiError extends Error {
  constructor(readonly code: ErrorCode, message: string) {
    super(message);
    this.name = 'ApiError';
  }

  get status(): number {
    return STATUS[this.code];
  }
}

export interface ErrorBody {
  error: { code: ErrorCode; message: string };
}

/**
 * Turns what a core call threw into an ApiError. The API validates its input before it calls
 * the core, so a ShoalError from below is about the state of things (a VM that is not running,
 * a name or tag in use): a conflict. Messages are kept to their first line.
 */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof ShoalError) return new ApiError('conflict', firstLine(err.message));
  return new ApiError('internal', `internal error: ${firstLine((err as Error)?.message ?? String(err))}`);
}

export function firstLine(text: string): string {
  return text.split('\n')[0]!.slice(0, 1000);
}
