/**
 * A path an envd call names, as the container path core's file operations take. E2B resolves
 * relative paths against the user's home; a shoal container's home is its image's business, so
 * relative paths are resolved against `/` here (documented in users.ts' terms: absolute paths are
 * the portable ones). `..` is refused, never resolved (protocol/files.ts).
 */
import path from 'node:path';
import { containerPathComponents } from '../../../protocol/files';
import { EnvdAuthError } from './sandbox-auth';

export function containerPath(value: string | undefined, what = 'path'): string {
  if (value === undefined || value === '') throw new EnvdAuthError('bad_request', `${what} is missing`);
  const absolute = value.startsWith('/') ? value : `/${value}`;
  const checked = containerPathComponents(absolute);
  if ('problem' in checked) throw new EnvdAuthError('bad_request', `${what}: ${checked.problem}`);
  return path.posix.join('/', ...checked.components);
}
