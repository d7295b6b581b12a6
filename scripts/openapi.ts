/**
 * Writes the API's OpenAPI document (built from the server's own route schemas) to a file:
 * `node dist/scripts/openapi.js sdk/openapi.json`. The SDK's types are generated from it
 * (npm run sdk:types); test/unit/sdk-types.test.ts fails when either is stale.
 */
import fs from 'node:fs';
import { buildServer } from '../src/api/server';
import { FakeCore } from '../test/helpers/fake-core';

export async function openApiDocument(): Promise<string> {
  const app = await buildServer(new FakeCore(), { token: 'x'.repeat(32), sweepMs: 0 });
  await app.ready();
  const doc = app.swagger();
  await app.close();
  return `${JSON.stringify(doc, null, 2)}\n`;
}

if (require.main === module) {
  void openApiDocument().then((text) => fs.writeFileSync(process.argv[2] ?? 'sdk/openapi.json', text));
}
