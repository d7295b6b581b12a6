/**
 * The E2B API key: the SDK sends `X-API-KEY: e2b_<key>` (it refuses a key without the prefix
 * before sending anything), and the key after the prefix is shoal's API token. Compared in
 * constant time, as the native API's bearer token is.
 */
import crypto from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { E2bApiError } from './errors';

export const E2B_KEY_PREFIX = 'e2b_';

export function apiKeyChecker(token: string): (request: FastifyRequest) => Promise<void> {
  const expected = Buffer.from(token);
  return async (request) => {
    const header = request.headers['x-api-key'];
    if (typeof header !== 'string') throw new E2bApiError(401, 'missing API key: send X-API-KEY: e2b_<token>');
    if (!header.startsWith(E2B_KEY_PREFIX)) throw new E2bApiError(401, `the API key must start with ${E2B_KEY_PREFIX}`);
    const given = Buffer.from(header.slice(E2B_KEY_PREFIX.length));
    if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) throw new E2bApiError(401, 'invalid API key');
  };
}
