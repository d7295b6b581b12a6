/** One step of the agent's recovery whose failure must not stop the others. */

/** Runs one step; a failure is logged (to the console) and the rest still runs. */
export function attempt(log: (msg: string) => void, what: string, step: () => void): boolean {
  try {
    step();
    return true;
  } catch (err) {
    log(`${what} failed: ${(err as Error).message}`);
    return false;
  }
}
