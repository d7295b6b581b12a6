/**
 * The SDK's types are generated from the server's OpenAPI document, which is generated from the
 * route schemas: both committed files must be what the generators make now, so the server and
 * the SDK cannot drift (`npm run sdk:types` regenerates them).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { it } from 'node:test';
import { openApiDocument } from '../../scripts/openapi';

const root = path.resolve(__dirname, '..', '..', '..');

it('sdk/openapi.json is the document the server serves', async () => {
  assert.equal(fs.readFileSync(path.join(root, 'sdk', 'openapi.json'), 'utf8'), await openApiDocument(), 'run `npm run sdk:types`');
});

it('sdk/src/openapi.ts is what openapi-typescript makes of it', () => {
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-sdk-types-')), 'openapi.ts');
  try {
    const r = spawnSync(path.join(root, 'node_modules', '.bin', 'openapi-typescript'), [path.join(root, 'sdk', 'openapi.json'), '-o', out], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(fs.readFileSync(path.join(root, 'sdk', 'src', 'openapi.ts'), 'utf8'), fs.readFileSync(out, 'utf8'), 'run `npm run sdk:types`');
  } finally {
    fs.rmSync(path.dirname(out), { recursive: true, force: true });
  }
});
