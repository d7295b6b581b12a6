/**
 * The core's errors that a front end answers differently from "the operation failed": a spec
 * that is wrong (400 in the APIs), a VM or snapshot that does not exist (404), or one in the
 * wrong state (409). All are ShoalErrors, so the CLI prints them as any other one-line error.
 */
import { ShoalError } from '../util/errors';

/** The spec itself is wrong (a bad name, user, path, size...): the APIs answer 400. */
export class InvalidSpecError extends ShoalError {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidSpecError';
  }
}

/** Runs a validation; its ShoalError becomes an InvalidSpecError (same message). */
export function validating<T>(check: () => T): T {
  try {
    return check();
  } catch (err) {
    if (err instanceof ShoalError && !(err instanceof InvalidSpecError)) throw new InvalidSpecError(err.message);
    throw err;
  }
}

export class NotFoundError extends ShoalError {
  constructor(message: string) {
    super(message);
    this.name = 'NotFoundError';
  }
}

export class ConflictError extends ShoalError {
  constructor(message: string) {
    super(message);
    this.name = 'ConflictError';
  }
}
