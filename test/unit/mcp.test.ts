/**
 * The MCP server driven by the MCP SDK's own client (linked in memory; test/e2e/api.test.ts
 * drives `shoal mcp` over stdio with real VMs): its tools, and that each one goes through the
 * API's validation.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, it } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { buildMcpServer } from '../../src/mcp/server';
import { FakeCore } from '../helpers/fake-core';
import { tempDir } from '../helpers/temp-dir';

let client: Client;
let close: () => Promise<void>;

before(async () => {
  const { server, api } = await buildMcpServer(new FakeCore());
  const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
  await server.connect(serverSide);
  client = new Client({ name: 'test', version: '1' });
  await client.connect(clientSide);
  close = async () => {
    await client.close();
    await server.close();
    await api.close();
  };
});

after(() => close());

const text = (result: unknown): string => ((result as { content: Array<{ text: string }> }).content[0]!.text);

it('lists the tools', async () => {
  const { tools } = await client.listTools();
  assert.deepEqual(tools.map((t) => t.name).sort(), ['create_sandbox', 'fork_sandbox', 'list_files', 'list_sandboxes', 'read_file', 'remove_sandbox', 'run_command', 'snapshot_sandbox', 'write_file']);
  for (const tool of tools) assert.ok(tool.description && tool.description.length > 10);
});

it('creates, runs, writes and reads, forks and removes', async () => {
  const created = JSON.parse(text(await client.callTool({ name: 'create_sandbox', arguments: { image: 'busybox' } }))) as { sandboxId: string };
  const ran = JSON.parse(text(await client.callTool({ name: 'run_command', arguments: { sandboxId: created.sandboxId, cmd: 'echo from-mcp' } }))) as { exitCode: number; stdout: string };
  assert.deepEqual([ran.exitCode, ran.stdout], [0, 'from-mcp\n']);
  await client.callTool({ name: 'write_file', arguments: { sandboxId: created.sandboxId, path: '/notes/a.txt', content: 'mcp wrote this' } });
  assert.equal(text(await client.callTool({ name: 'read_file', arguments: { sandboxId: created.sandboxId, path: '/notes/a.txt' } })), 'mcp wrote this');
  const children = JSON.parse(text(await client.callTool({ name: 'fork_sandbox', arguments: { sandboxId: created.sandboxId, count: 2 } }))) as Array<{ sandbox: { parentId: string } }>;
  assert.equal(children.length, 2);
  assert.equal(children[0]!.sandbox.parentId, created.sandboxId);
  assert.equal(text(await client.callTool({ name: 'remove_sandbox', arguments: { sandboxId: created.sandboxId } })), 'ok');
});

it('bad arguments come back as a tool error with the API\'s message, nothing changed', async () => {
  const before = text(await client.callTool({ name: 'list_sandboxes', arguments: {} }));
  const result = await client.callTool({ name: 'fork_sandbox', arguments: { sandboxId: 'nosuch', count: 101 } });
  assert.equal(result.isError, true);
  assert.match(text(result), /error \(400\): body.count must be <= 100/);
  const outside = await client.callTool({ name: 'read_file', arguments: { sandboxId: 'nosuch', path: '/a/../../b' } });
  assert.equal(outside.isError, true);
  assert.equal(text(await client.callTool({ name: 'list_sandboxes', arguments: {} })), before);
});

it('create_sandbox takes host archives only from its --image-dir directories', async () => {
  const dir = tempDir('shoal-mcp-images-');
  fs.writeFileSync(path.join(dir, 'img.tar'), 'archive');
  const core = new FakeCore();
  const { server, api } = await buildMcpServer(core, { imageDirs: [dir] });
  const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
  await server.connect(serverSide);
  const own = new Client({ name: 'test', version: '1' });
  await own.connect(clientSide);
  try {
    const refused = await own.callTool({ name: 'create_sandbox', arguments: { image: 'docker-archive:/etc/passwd' } });
    assert.equal(refused.isError, true);
    assert.match(text(refused), /error \(404\): no such image archive/);
    assert.equal(core.list().length, 0);
    const created = JSON.parse(text(await own.callTool({ name: 'create_sandbox', arguments: { image: 'docker-archive:img.tar' } }))) as { image: string };
    assert.equal(created.image, `docker-archive:${fs.realpathSync(path.join(dir, 'img.tar'))}`);
  } finally {
    await own.close();
    await server.close();
    await api.close();
  }
  // Without directories (the default), the same request is refused.
  const refused = await client.callTool({ name: 'create_sandbox', arguments: { image: `docker-archive:${path.join(dir, 'img.tar')}` } });
  assert.equal(refused.isError, true);
  assert.match(text(refused), /no such image archive/);
});
