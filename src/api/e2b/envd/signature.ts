/**
 * The signed file URLs of the e2b SDK (`uploadUrl()` / `downloadUrl()`, src/sandbox/signature.ts
 * in e2b-dev/E2B): `v1_` + base64(sha256("PATH:OPERATION:USER:TOKEN[:EXPIRATION]")) without `=`
 * padding, the token being the sandbox's envdAccessToken; an absent user is signed as "".
 */
import crypto from 'node:crypto';

export type FileOperation = 'read' | 'write';

export function fileSignature(path: string, operation: FileOperation, user: string | undefined, token: string, expiration: number | null): string {
  const raw = expiration === null ? `${path}:${operation}:${user ?? ''}:${token}` : `${path}:${operation}:${user ?? ''}:${token}:${expiration}`;
  return `v1_${crypto.createHash('sha256').update(raw).digest('base64').replace(/=+$/, '')}`;
}

export interface SignedQuery {
  path: string;
  username: string | undefined;
  signature: string;
  /** Unix seconds, as sent (validated here). */
  expiration: string | undefined;
}

export type SignatureCheck = 'ok' | 'mismatch' | 'expired' | 'malformed';

/** Checks a signed query against one sandbox's token, timing-safe. */
export function checkSignature(query: SignedQuery, operation: FileOperation, token: string, nowSeconds = Math.floor(Date.now() / 1000)): SignatureCheck {
  let expiration: number | null = null;
  if (query.expiration !== undefined) {
    if (!/^[0-9]{1,12}$/.test(query.expiration)) return 'malformed';
    expiration = Number(query.expiration);
  }
  if (!/^v1_[A-Za-z0-9+/]{43}$/.test(query.signature)) return 'malformed';
  const expected = Buffer.from(fileSignature(query.path, operation, query.username, token, expiration));
  const given = Buffer.from(query.signature);
  if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return 'mismatch';
  if (expiration !== null && expiration < nowSeconds) return 'expired';
  return 'ok';
}
