/**
 * `shoal mcp`: a Model Context Protocol server on stdio (the official TypeScript SDK) with tools
 * for an AI agent: create a sandbox, run a command, read and write files, fork, snapshot,
 * remove. Each tool is one call of the HTTP API's own routes, in process (fastify's inject),
 * so the MCP tools validate and behave exactly as the API does, over the same core.
 * stdout carries the protocol only; nothing else may write there.
 */
import crypto from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import { z } from 'zod';
import type { Core } from '../api/core';
import { API_VERSION, buildServer, type FastifyInstance } from '../api/server';

type ToolResult = { content: Array<{ type: 'text'; text: string }>; isError?: boolean };

const sandboxId = z.string().min(1).max(128).describe('the sandbox id (or name)');

export interface McpOptions {
  /** Directories whose archives create_sandbox may use (as `shoal serve --image-dir`). */
  imageDirs?: readonly string[];
}

export async function buildMcpServer(core: Core, options: McpOptions = {}): Promise<{ server: McpServer; api: FastifyInstance }> {
  const token = crypto.randomBytes(32).toString('hex');
  const api = await buildServer(core, { token, imageDirs: options.imageDirs ?? [] });
  const call = async (method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body?: unknown, raw?: Buffer): Promise<ToolResult> => {
    const headers: Record<string, string> = { authorization: `Bearer ${token}` };
    if (raw) headers['content-type'] = 'application/octet-stream';
    const response = await api.inject({ method, url, headers, ...(raw ? { payload: raw } : body !== undefined ? { payload: body as object } : {}) });
    if (response.statusCode >= 400) {
      let message = response.body;
      try {
        const parsed = JSON.parse(response.body) as { error?: { message?: string } };
        message = parsed.error?.message ?? message;
      } catch {
        // not JSON
      }
      return { content: [{ type: 'text', text: `error (${response.statusCode}): ${message}` }], isError: true };
    }
    return { content: [{ type: 'text', text: response.body || 'ok' }] };
  };
  const enc = encodeURIComponent;

  const server = new McpServer({ name: 'shoal', version: API_VERSION });

  server.registerTool('create_sandbox', {
    description: 'Create a sandbox: a microVM running a container of the image (idle, ready for commands), or a clone of a snapshot. Returns its JSON (sandboxId, state, expiresAt, ...).',
    inputSchema: {
      image: z.string().optional().describe('a registry reference, or docker-archive:PATH / oci-archive:PATH of a file under one of the --image-dir directories'),
      snapshot: z.string().optional().describe('create a clone of this snapshot instead'),
      cpus: z.number().int().optional(),
      memoryMiB: z.number().int().optional(),
      timeoutSec: z.number().int().optional().describe('remove the sandbox after this many seconds (default 300)'),
      metadata: z.record(z.string(), z.string()).optional(),
    },
  }, async (args) => call('POST', '/v1/sandboxes', stripUndefined(args)));

  server.registerTool('list_sandboxes', { description: 'List sandboxes (also those made with the shoal CLI).' }, async () => call('GET', '/v1/sandboxes'));

  server.registerTool('run_command', {
    description: 'Run a shell command in a sandbox\'s container and wait for it: returns exitCode, stdout, stderr (each capped at 1 MiB).',
    inputSchema: { sandboxId, cmd: z.string().min(1).describe('run by /bin/sh -c'), cwd: z.string().optional(), timeoutSec: z.number().int().optional() },
  }, async ({ sandboxId: id, ...rest }) => call('POST', `/v1/sandboxes/${enc(id)}/exec`, stripUndefined(rest)));

  server.registerTool('read_file', {
    description: 'Read a file of the sandbox\'s container (as UTF-8 text).',
    inputSchema: { sandboxId, path: z.string().describe('absolute path in the container') },
  }, async ({ sandboxId: id, path }) => call('GET', `/v1/sandboxes/${enc(id)}/files?path=${enc(path)}`));

  server.registerTool('write_file', {
    description: 'Write a file in the sandbox\'s container (parent directories are created).',
    inputSchema: { sandboxId, path: z.string(), content: z.string() },
  }, async ({ sandboxId: id, path, content }) => call('PUT', `/v1/sandboxes/${enc(id)}/files?path=${enc(path)}`, undefined, Buffer.from(content)));

  server.registerTool('list_files', {
    description: 'List a directory of the sandbox\'s container.',
    inputSchema: { sandboxId, path: z.string() },
  }, async ({ sandboxId: id, path }) => call('GET', `/v1/sandboxes/${enc(id)}/fs/list?path=${enc(path)}`));

  server.registerTool('fork_sandbox', {
    description: 'Snapshot a running sandbox and start COUNT clones of it (each sees the parent\'s files and processes as they were). Returns one entry per child.',
    inputSchema: { sandboxId, count: z.number().int().describe('1 to 100'), timeoutSec: z.number().int().optional() },
  }, async ({ sandboxId: id, ...rest }) => call('POST', `/v1/sandboxes/${enc(id)}/fork`, stripUndefined(rest)));

  server.registerTool('snapshot_sandbox', {
    description: 'Snapshot a running sandbox under a tag (create_sandbox with snapshot: TAG makes clones of it).',
    inputSchema: { sandboxId, tag: z.string() },
  }, async ({ sandboxId: id, tag }) => call('POST', `/v1/sandboxes/${enc(id)}/snapshots`, { tag }));

  server.registerTool('remove_sandbox', {
    description: 'Kill and remove a sandbox.',
    inputSchema: { sandboxId },
  }, async ({ sandboxId: id }) => call('DELETE', `/v1/sandboxes/${enc(id)}`));

  return { server, api };
}

function stripUndefined(value: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined));
}

/** Serves MCP on the given transport (stdio by default) until it closes. */
export async function serveMcp(core: Core, transport: Transport = new StdioServerTransport(), options: McpOptions = {}): Promise<void> {
  const { server, api } = await buildMcpServer(core, options);
  const closed = new Promise<void>((resolve) => { transport.onclose = resolve; });
  await server.connect(transport);
  await Promise.race([closed, new Promise<void>((resolve) => process.stdin.once('end', resolve))]);
  await server.close().catch(() => undefined);
  await api.close();
}
