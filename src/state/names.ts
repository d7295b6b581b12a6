/**
 * What a VM id and a VM name may look like, checked wherever one enters (the CLI's arguments,
 * a claim file's content, a supervisor's argv): both become path components under the state
 * directory, so anything else (`..`, `/`, NUL, a leading dot) is refused before a path is built.
 */
import { nameProblem } from './vm-record';

/** VM ids are 12 lowercase hex characters (StateStore.newId). */
export const VM_ID_PATTERN = /^[0-9a-f]{12}$/;

export function validateVmId(id: string): boolean {
  return VM_ID_PATTERN.test(id);
}

/** A name or an id (prefix) as a user may type it: a valid name, which every id prefix also is. */
export function nameOrIdProblem(value: string): string | undefined {
  return nameProblem(value);
}
