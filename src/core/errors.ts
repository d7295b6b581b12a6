/**
 * The core's errors that a front end answers differently from "the operation failed": a VM or
 * snapshot that does not exist (404 in the APIs), or one in the wrong state (409). Both are
 * ShoalErrors, so the CLI prints them as any other one-line error.
 */
import { ShoalError } from '../util/errors';

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
