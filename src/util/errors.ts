/**
 * An error meant for the user: its message is printed as one line and the
 * process exits with exitCode. Anything else that escapes is a bug and is
 * printed with its stack.
 */
export class ShoalError extends Error {
  constructor(message: string, readonly exitCode = 125) {
    super(message);
    this.name = 'ShoalError';
  }
}
