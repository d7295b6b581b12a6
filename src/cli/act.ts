/** Wiring a command's handler into commander. */

type Action = (...args: never[]) => number | Promise<number>;

/** Runs a command action and turns its result or error into the process exit code. */
export function act<A extends Action>(action: A): (...args: Parameters<A>) => Promise<void> {
  return async (...args: Parameters<A>) => {
    process.exitCode = await action(...args);
  };
}
