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
import { buildMcpServer, capText } from '../../src/mcp/server';
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

it('lists the tools, each with an output schema and annotations', async () => {
  const { tools } = await client.listTools();
  assert.deepEqual(tools.map((t) => t.name).sort(), ['create_sandbox', 'delete_snapshot', 'fork_sandbox', 'kill_process', 'list_files', 'list_processes', 'list_sandboxes', 'list_snapshots', 'logs', 'pause_sandbox', 'read_file', 'remove_sandbox', 'resume_sandbox', 'run_command', 'snapshot_sandbox', 'start_command', 'write_file']);
  for (const tool of tools) {
    assert.ok(tool.description && tool.description.length > 10);
    assert.equal(tool.outputSchema?.type, 'object', `${tool.name} has an output schema`);
    assert.equal(typeof tool.annotations?.readOnlyHint, 'boolean', `${tool.name} says whether it is read-only`);
    assert.equal(typeof tool.annotations?.destructiveHint, 'boolean', `${tool.name} says whether it is destructive`);
  }
  const byName = new Map(tools.map((t) => [t.name, t]));
  for (const name of ['list_sandboxes', 'read_file', 'list_files', 'logs', 'list_snapshots', 'list_processes']) assert.equal(byName.get(name)!.annotations!.readOnlyHint, true, name);
  for (const name of ['remove_sandbox', 'delete_snapshot', 'kill_process']) assert.equal(byName.get(name)!.annotations!.destructiveHint, true, name);
});

it('creates, runs, writes and reads, forks and removes', async () => {
  const created = JSON.parse(text(await client.callTool({ name: 'create_sandbox', arguments: { image: 'busybox' } }))) as { sandboxId: string };
  const ran = JSON.parse(text(await client.callTool({ name: 'run_command', arguments: { sandboxId: created.sandboxId, cmd: 'echo from-mcp' } }))) as { exitCode: number; stdout: string };
  assert.deepEqual([ran.exitCode, ran.stdout], [0, 'from-mcp\n']);
  await client.callTool({ name: 'write_file', arguments: { sandboxId: created.sandboxId, path: '/notes/a.txt', content: 'mcp wrote this' } });
  assert.equal(text(await client.callTool({ name: 'read_file', arguments: { sandboxId: created.sandboxId, path: '/notes/a.txt' } })), 'mcp wrote this');
  const forked = await client.callTool({ name: 'fork_sandbox', arguments: { sandboxId: created.sandboxId, count: 2 } });
  const { children } = forked.structuredContent as { children: Array<{ sandbox: { parentId: string } }> };
  assert.equal(children.length, 2);
  assert.equal(children[0]!.sandbox.parentId, created.sandboxId);
  assert.deepEqual(JSON.parse(text(forked)), forked.structuredContent, 'the text is the structured content\'s JSON');
  assert.deepEqual((await client.callTool({ name: 'remove_sandbox', arguments: { sandboxId: created.sandboxId } })).structuredContent, { removed: created.sandboxId });
});

it('background commands: start, list, kill; snapshots: create, list, delete; logs', async () => {
  const created = (await client.callTool({ name: 'create_sandbox', arguments: { image: 'busybox', metadata: { who: 'mcp-bg' } } })).structuredContent as { sandboxId: string };
  const listed = (await client.callTool({ name: 'list_sandboxes', arguments: { metadata: { who: 'mcp-bg' } } })).structuredContent as { sandboxes: Array<{ sandboxId: string }> };
  assert.deepEqual(listed.sandboxes.map((s) => s.sandboxId), [created.sandboxId]);
  const started = await client.callTool({ name: 'start_command', arguments: { sandboxId: created.sandboxId, cmd: 'exec sleep 30' } });
  const { pid } = started.structuredContent as { pid: number };
  assert.ok(Number.isInteger(pid));
  const running = (await client.callTool({ name: 'list_processes', arguments: { sandboxId: created.sandboxId } })).structuredContent as { processes: Array<{ pid: number; running: boolean }> };
  assert.deepEqual(running.processes.filter((p) => p.pid === pid).map((p) => p.running), [true], 'still running after start_command returned');
  assert.deepEqual((await client.callTool({ name: 'kill_process', arguments: { sandboxId: created.sandboxId, pid } })).structuredContent, { pid, signal: 'SIGKILL' });
  const deadline = Date.now() + 5000;
  let ended: { running: boolean; signal: string | null } | undefined;
  while (Date.now() < deadline) {
    const now = (await client.callTool({ name: 'list_processes', arguments: { sandboxId: created.sandboxId } })).structuredContent as { processes: Array<{ pid: number; running: boolean; signal: string | null }> };
    ended = now.processes.find((p) => p.pid === pid);
    if (ended && !ended.running) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.deepEqual([ended?.running, ended?.signal], [false, 'SIGKILL']);
  const snap = await client.callTool({ name: 'snapshot_sandbox', arguments: { sandboxId: created.sandboxId, tag: 'mcp-snap' } });
  assert.equal((snap.structuredContent as { tag: string }).tag, 'mcp-snap');
  const snaps = (await client.callTool({ name: 'list_snapshots', arguments: {} })).structuredContent as { snapshots: Array<{ tag: string }> };
  assert.ok(snaps.snapshots.some((s) => s.tag === 'mcp-snap'));
  assert.deepEqual((await client.callTool({ name: 'delete_snapshot', arguments: { tag: 'mcp-snap' } })).structuredContent, { deleted: 'mcp-snap' });
  const logs = await client.callTool({ name: 'logs', arguments: { sandboxId: created.sandboxId } });
  assert.equal(logs.isError, undefined);
  assert.equal(typeof (logs.structuredContent as { logs: string }).logs, 'string');
  await client.callTool({ name: 'remove_sandbox', arguments: { sandboxId: created.sandboxId } });
});

it('pause_sandbox and resume_sandbox: paused in the list, refused by other tools, resumed under its name', async () => {
  const created = (await client.callTool({ name: 'create_sandbox', arguments: { image: 'busybox', metadata: { who: 'mcp-pause' } } })).structuredContent as { sandboxId: string; name: string };
  const paused = await client.callTool({ name: 'pause_sandbox', arguments: { sandboxId: created.sandboxId } });
  assert.equal((paused.structuredContent as { state: string }).state, 'paused');
  const listed = (await client.callTool({ name: 'list_sandboxes', arguments: { metadata: { who: 'mcp-pause' } } })).structuredContent as { sandboxes: Array<{ state: string }> };
  assert.deepEqual(listed.sandboxes.map((x) => x.state), ['paused']);
  const refused = await client.callTool({ name: 'run_command', arguments: { sandboxId: created.sandboxId, cmd: 'true' } });
  assert.equal(refused.isError, true);
  assert.match(text(refused), /paused: resume it first/);
  const resumed = (await client.callTool({ name: 'resume_sandbox', arguments: { sandboxId: created.name, timeoutSec: 60 } })).structuredContent as { sandboxId: string; name: string; state: string };
  assert.deepEqual([resumed.name, resumed.state], [created.name, 'running']);
  await client.callTool({ name: 'remove_sandbox', arguments: { sandboxId: resumed.sandboxId } });
});

it('long outputs keep their head and tail, with a line saying how many bytes were cut', async () => {
  assert.deepEqual(capText('short', 16), { text: 'short', cutBytes: 0 });
  const capped = capText(`${'a'.repeat(100)}${'z'.repeat(100)}`, 20);
  assert.deepEqual(capped, { text: `${'a'.repeat(10)}\n[... 180 bytes cut ...]\n${'z'.repeat(10)}`, cutBytes: 180 });
  // Cuts fall on character boundaries: no broken UTF-8 in what the model reads.
  assert.ok(!capText('é'.repeat(50), 9).text.includes('\ufffd'));
  const { server, api } = await buildMcpServer(new FakeCore(), { outputCap: 64 });
  const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
  await server.connect(serverSide);
  const own = new Client({ name: 'test', version: '1' });
  await own.connect(clientSide);
  try {
    const created = (await own.callTool({ name: 'create_sandbox', arguments: { image: 'busybox' } })).structuredContent as { sandboxId: string };
    const ran = (await own.callTool({ name: 'run_command', arguments: { sandboxId: created.sandboxId, cmd: 'echo START; seq 1 2000; echo END' } })).structuredContent as { stdout: string; cutBytes: number; exitCode: number };
    assert.equal(ran.exitCode, 0);
    assert.match(ran.stdout, /^START\n/);
    assert.match(ran.stdout, /\nEND\n$/);
    assert.match(ran.stdout, /\[\.\.\. \d+ bytes cut \.\.\.\]/);
    assert.ok(ran.cutBytes > 8000);
    await own.callTool({ name: 'write_file', arguments: { sandboxId: created.sandboxId, path: '/big.txt', content: `HEAD${'x'.repeat(5000)}TAIL` } });
    const read = await own.callTool({ name: 'read_file', arguments: { sandboxId: created.sandboxId, path: '/big.txt' } });
    assert.match(text(read), /^HEAD[x]*\n\[\.\.\. \d+ bytes cut \.\.\.\]\n[x]*TAIL$/);
    assert.equal((read.structuredContent as { cutBytes: number }).cutBytes, 5008 - 64);
  } finally {
    await own.close();
    await server.close();
    await api.close();
  }
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
