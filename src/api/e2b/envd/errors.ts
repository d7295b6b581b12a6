/**
 * envd's errors in Connect's terms: what a core call throws (ApiError, FilesError, ShoalError)
 * or the auth refuses, as the ConnectError whose code the e2b SDK maps onto its own errors
 * (NotFound -> NotFoundError / FileNotFoundError, Unauthenticated -> AuthenticationError, ...).
 */
import { Code, ConnectError } from '@connectrpc/connect';
import { FilesError } from '../../../host/files-client';
import { ShoalError } from '../../../util/errors';
import { ApiError, firstLine } from '../../errors';
import { EnvdAuthError } from './sandbox-auth';

const DENIAL: Record<EnvdAuthError['kind'], Code> = {
  unauthenticated: Code.Unauthenticated,
  permission_denied: Code.PermissionDenied,
  not_found: Code.NotFound,
  unavailable: Code.Unavailable,
  bad_request: Code.InvalidArgument,
};

const FILES: Record<string, Code> = {
  ENOENT: Code.NotFound,
  EEXIST: Code.AlreadyExists,
  ENOTEMPTY: Code.FailedPrecondition,
  EACCES: Code.PermissionDenied,
  EPERM: Code.PermissionDenied,
  ENOSPC: Code.ResourceExhausted,
  EMFILE: Code.ResourceExhausted,
  EOUTSIDE: Code.InvalidArgument,
  EINVAL: Code.InvalidArgument,
  ENOTDIR: Code.InvalidArgument,
  EISDIR: Code.InvalidArgument,
  ELOOP: Code.InvalidArgument,
  ENAMETOOLONG: Code.InvalidArgument,
  ENOCONTAINER: Code.Unavailable,
};

const API: Record<string, Code> = {
  not_found: Code.NotFound,
  conflict: Code.Unavailable,
  bad_request: Code.InvalidArgument,
  unauthorized: Code.Unauthenticated,
  payload_too_large: Code.ResourceExhausted,
  too_many_requests: Code.ResourceExhausted,
  unavailable: Code.Unavailable,
};

export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof EnvdAuthError) return new ConnectError(err.message, DENIAL[err.kind]);
  if (err instanceof FilesError) return new ConnectError(firstLine(err.message), FILES[err.code] ?? Code.Internal);
  if (err instanceof ApiError) return new ConnectError(firstLine(err.message), API[err.code] ?? Code.Internal);
  if (err instanceof ShoalError) return new ConnectError(firstLine(err.message), Code.Unavailable);
  return new ConnectError(firstLine(err instanceof Error ? err.message : String(err)), Code.Internal);
}

/** The HTTP status for an envd HTTP route (/files, /health), envd.yaml's codes. */
export function httpStatusOf(err: unknown): number {
  const code = toConnectError(err).code;
  switch (code) {
    case Code.InvalidArgument: return 400;
    case Code.Unauthenticated: return 401;
    case Code.PermissionDenied: return 403;
    case Code.NotFound: return 404;
    case Code.AlreadyExists: return 409;
    case Code.ResourceExhausted: return 507;
    case Code.Unavailable: return 502;
    default: return 500;
  }
}
