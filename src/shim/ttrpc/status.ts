/**
 * Errors a ttrpc method answers with: a gRPC status code and one line. containerd maps the
 * codes to its errdefs (NotFound, AlreadyExists, FailedPrecondition, Unimplemented, ...), so
 * the code says what kind of failure it was and the message says which.
 */
export const Code = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  FAILED_PRECONDITION: 9,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
} as const;

export class TtrpcError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
  }
}
