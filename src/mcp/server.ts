/**
 * `shoal mcp`: a Model Context Protocol server on stdio (the official TypeScript SDK) with tools
 * for an AI agent: sandboxes (create, list, remove, pause, resume), commands (run and wait, start in the
 * background, list, kill), files, logs, snapshots (create, list, delete) and fork. Each tool is
 * one call of the HTTP API's own routes, in process (fastify's inject), so the MCP tools
 * validate and behave exactly as the API does, over the same core.
 *
 * Every tool declares an outputSchema and answers with structuredContent (its JSON also as the
 * text content, as the MCP spec asks), and carries annotations (read-only, destructive,
 * idempotent) so a client can decide what to confirm. What a sandbox says (command output, file
 * contents, logs) goes into a model's context: each such text is capped, its head and tail
 * kept, with a line saying how many bytes were cut between them.
 * stdout carries the protocol only; nothing else may write there.
 */
import crypto from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { CallToolResult, ToolAnnotations } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import type { Core } from '../api/core';
import { API_VERSION, buildServer, type FastifyInstance } from '../api/server';

const sandboxId = z.string().min(1).max(128).describe('the sandbox id (or name)');

/** Bytes of one text (a stream's output, a file, the logs) a tool hands the model, head and tail together. */
export const MCP_OUTPUT_CAP = 16 * 1024;

export interface McpOptions {
  /** Directories whose archives create_sandbox may use (as `shoal serve --image-dir`). */
  imageDirs?: readonly string[];
  /** Cap of each text in a tool's answer (bytes; default MCP_OUTPUT_CAP). */
  outputCap?: number;
}

/**
 * text cut to at most `cap` bytes: its head and tail, with a line between them saying how many
 * bytes were cut. Cuts fall on UTF-8 character boundaries.
 */
export function capText(text: string, cap: number): { text: string; cutBytes: number } {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= cap) return { text, cutBytes: 0 };
  let head = Math.floor(cap / 2);
  let tail = bytes.length - (cap - head);
  while (head > 0 && (bytes[head]! & 0xc0) === 0x80) head--;
  while (tail < bytes.length && (bytes[tail]! & 0xc0) === 0x80) tail++;
  const cutBytes = tail - head;
  return { text: `${bytes.subarray(0, head).toString('utf8')}\n[... ${cutBytes} bytes cut ...]\n${bytes.subarray(tail).toString('utf8')}`, cutBytes };
}

// ---- output schemas (loose: the API may add fields; what is named here is promised) ----------

const Sandbox = z.looseObject({
  sandboxId: z.string(),
  name: z.string(),
  state: z.string(),
  image: z.string(),
  expiresAt: z.string().nullable(),
  metadata: z.record(z.string(), z.string()),
  parentId: z.string().nullable(),
});
const ProcessInfo = z.looseObject({ pid: z.number().int(), cmd: z.array(z.string()), running: z.boolean(), exitCode: z.number().int().nullable(), signal: z.string().nullable() });
const FileEntry = z.looseObject({ path: z.string(), type: z.string() });
const SnapshotInfo = z.looseObject({ tag: z.string(), parent: z.string(), createdAt: z.string() });
const ApiErrorShape = z.object({ code: z.string(), message: z.string() });

const READ_ONLY: ToolAnnotations = { readOnlyHint: true, destructiveHint: false, idempotentHint: true, openWorldHint: false };
/** Changes things, never destroys what exists. */
const ADDITIVE: ToolAnnotations = { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false };

type Json = Record<string, unknown>;

export async function buildMcpServer(core: Core, options: McpOptions = {}): Promise<{ server: McpServer; api: FastifyInstance }> {
  const token = crypto.randomBytes(32).toString('hex');
  const api = await buildServer(core, { token, imageDirs: options.imageDirs ?? [] });
  const cap = options.outputCap ?? MCP_OUTPUT_CAP;
  const headers = (extra: Record<string, string> = {}): Record<string, string> => ({ authorization: `Bearer ${token}`, ...extra });

  /** One API call: its JSON (or text) body, or the API's error as a tool error. */
  const call = async (method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body?: unknown, raw?: Buffer): Promise<{ ok: true; body: string } | { ok: false; result: CallToolResult }> => {
    const response = await api.inject({ method, url, headers: headers(raw ? { 'content-type': 'application/octet-stream' } : {}), ...(raw ? { payload: raw } : body !== undefined ? { payload: body as object } : {}) });
    if (response.statusCode < 400) return { ok: true, body: response.body };
    return { ok: false, result: apiError(response.statusCode, response.body) };
  };
  /** The API's JSON answer as structuredContent (shaped by `shape`), its JSON as the text. */
  const structured = async (method: 'GET' | 'POST' | 'PUT' | 'DELETE', url: string, body: unknown, shape: (json: unknown) => Json): Promise<CallToolResult> => {
    const r = await call(method, url, body);
    if (!r.ok) return r.result;
    const content = shape(r.body === '' ? undefined : JSON.parse(r.body));
    return { content: [{ type: 'text', text: JSON.stringify(content) }], structuredContent: content };
  };
  const enc = encodeURIComponent;
  const server = new McpServer({ name: 'shoal', version: API_VERSION });

  // ---- sandboxes ---------------------------------------------------------------------------

  server.registerTool('create_sandbox', {
    description: 'Create a sandbox: a microVM running a container of the image (idle, ready for commands), or a clone of a snapshot. Returns the sandbox (sandboxId, state, expiresAt, ...).',
    inputSchema: {
      image: z.string().optional().describe('a registry reference, or docker-archive:PATH / oci-archive:PATH of a file under one of the --image-dir directories'),
      snapshot: z.string().optional().describe('create a clone of this snapshot instead'),
      cpus: z.number().int().optional(),
      memoryMiB: z.number().int().optional(),
      timeoutSec: z.number().int().optional().describe('remove the sandbox after this many seconds (default 300)'),
      metadata: z.record(z.string(), z.string()).optional(),
    },
    outputSchema: Sandbox,
    annotations: { ...ADDITIVE, title: 'Create a sandbox' },
  }, async (args) => structured('POST', '/v1/sandboxes', stripUndefined(args), (json) => json as Json));

  server.registerTool('list_sandboxes', {
    description: 'List sandboxes (also those made with the shoal CLI), optionally only those whose metadata has every given KEY=VALUE.',
    inputSchema: { metadata: z.record(z.string(), z.string()).optional().describe('only sandboxes with all of these metadata values') },
    outputSchema: z.object({ sandboxes: z.array(Sandbox) }),
    annotations: { ...READ_ONLY, title: 'List sandboxes' },
  }, async ({ metadata }) => {
    const query = metadata && Object.keys(metadata).length > 0 ? `?metadata=${enc(new URLSearchParams(metadata).toString())}` : '';
    return structured('GET', `/v1/sandboxes${query}`, undefined, (json) => ({ sandboxes: json }));
  });

  server.registerTool('remove_sandbox', {
    description: 'Kill and remove a sandbox (its processes, files and disk are gone).',
    inputSchema: { sandboxId },
    outputSchema: z.object({ removed: z.string() }),
    annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false, title: 'Kill and remove a sandbox' },
  }, async ({ sandboxId: id }) => structured('DELETE', `/v1/sandboxes/${enc(id)}`, undefined, () => ({ removed: id })));

  server.registerTool('pause_sandbox', {
    description: 'Pause a running sandbox: its memory and disk are kept in a snapshot and its VM stops (no RAM or CPU held); it does not expire while paused. Resume it with resume_sandbox.',
    inputSchema: { sandboxId },
    outputSchema: Sandbox,
    // Not destructive: nothing is lost; the running processes continue after resume_sandbox.
    annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: false, openWorldHint: false, title: 'Pause a sandbox' },
  }, async ({ sandboxId: id }) => structured('POST', `/v1/sandboxes/${enc(id)}/pause`, undefined, (json) => json as Json));

  server.registerTool('resume_sandbox', {
    description: 'Resume a paused sandbox with its processes, files and memory as they were (same name, a new sandboxId).',
    inputSchema: { sandboxId: sandboxId.describe('the paused sandbox\'s name (or the id it had)'), timeoutSec: z.number().int().optional().describe('remove it after this many seconds (default 300)') },
    outputSchema: Sandbox,
    annotations: { ...ADDITIVE, title: 'Resume a paused sandbox' },
  }, async ({ sandboxId: id, timeoutSec }) => structured('POST', `/v1/sandboxes/${enc(id)}/resume`, stripUndefined({ timeoutSec }), (json) => json as Json));

  // ---- commands ----------------------------------------------------------------------------

  server.registerTool('run_command', {
    description: `Run a shell command in a sandbox's container and wait for it: returns exitCode, stdout, stderr (each cut to its first and last ${cap / 2} bytes when longer, with a line saying how much was cut).`,
    inputSchema: { sandboxId, cmd: z.string().min(1).describe('run by /bin/sh -c'), cwd: z.string().optional(), user: z.string().optional().describe('USER[:GROUP] in the container'), timeoutSec: z.number().int().optional() },
    outputSchema: z.looseObject({ pid: z.number().int(), exitCode: z.number().int().nullable(), signal: z.string().nullable(), stdout: z.string(), stderr: z.string(), timedOut: z.boolean(), cutBytes: z.number().int() }),
    // A command can change or delete anything in the sandbox.
    annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: true, title: 'Run a command' },
  }, async ({ sandboxId: id, ...rest }) => structured('POST', `/v1/sandboxes/${enc(id)}/exec`, stripUndefined(rest), (json) => {
    const result = json as Json & { stdout: string; stderr: string };
    const stdout = capText(result.stdout, cap);
    const stderr = capText(result.stderr, cap);
    return { ...result, stdout: stdout.text, stderr: stderr.text, cutBytes: stdout.cutBytes + stderr.cutBytes };
  }));

  server.registerTool('start_command', {
    description: 'Start a shell command in the background and return its pid at once (see list_processes, kill_process; it keeps running after this call).',
    inputSchema: { sandboxId, cmd: z.string().min(1).describe('run by /bin/sh -c'), cwd: z.string().optional(), user: z.string().optional(), timeoutSec: z.number().int().optional() },
    outputSchema: z.object({ pid: z.number().int() }),
    annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: true, title: 'Start a background command' },
  }, async ({ sandboxId: id, ...rest }) => {
    // The API's streaming exec answers with a `start` event (its pid) first; the process lives
    // in the API's process table whether or not anyone reads its stream, so it is dropped here.
    const response = await api.inject({ method: 'POST', url: `/v1/sandboxes/${enc(id)}/exec`, headers: headers({ accept: 'text/event-stream' }), payload: stripUndefined(rest), payloadAsStream: true });
    const stream = response.stream();
    if (response.statusCode >= 400) {
      let text = '';
      for await (const chunk of stream) text += String(chunk);
      return apiError(response.statusCode, text);
    }
    let seen = '';
    try {
      for await (const chunk of stream) {
        seen += String(chunk);
        const start = /event: start\ndata: (\{[^\n]*\})/.exec(seen);
        if (start) {
          const pid = (JSON.parse(start[1]!) as { pid: number }).pid;
          return { content: [{ type: 'text', text: JSON.stringify({ pid }) }], structuredContent: { pid } };
        }
        if (seen.length > 64 * 1024) break;
      }
    } finally {
      stream.destroy();
    }
    return { content: [{ type: 'text', text: 'the process did not start' }], isError: true };
  });

  server.registerTool('list_processes', {
    description: 'List the processes started through the API in a sandbox (running and recently ended).',
    inputSchema: { sandboxId },
    outputSchema: z.object({ processes: z.array(ProcessInfo) }),
    annotations: { ...READ_ONLY, title: 'List processes' },
  }, async ({ sandboxId: id }) => structured('GET', `/v1/sandboxes/${enc(id)}/processes`, undefined, (json) => ({ processes: json })));

  server.registerTool('kill_process', {
    description: 'Send a signal (default SIGKILL) to a process started through the API; it reaches the container process itself.',
    inputSchema: { sandboxId, pid: z.number().int().min(1), signal: z.string().max(16).optional().describe('e.g. SIGTERM, TERM, SIGKILL (default)') },
    outputSchema: z.object({ pid: z.number().int(), signal: z.string() }),
    annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: false, openWorldHint: false, title: 'Signal a process' },
  }, async ({ sandboxId: id, pid, signal }) => structured('POST', `/v1/sandboxes/${enc(id)}/processes/${pid}/signal`, { signal: signal ?? 'SIGKILL' }, () => ({ pid, signal: signal ?? 'SIGKILL' })));

  server.registerTool('logs', {
    description: `The sandbox's container output (its main command's stdout and stderr, in order), cut to its first and last ${cap / 2} bytes when longer.`,
    inputSchema: { sandboxId },
    outputSchema: z.object({ logs: z.string(), truncated: z.boolean(), cutBytes: z.number().int() }),
    annotations: { ...READ_ONLY, title: 'Read the container log' },
  }, async ({ sandboxId: id }) => structured('GET', `/v1/sandboxes/${enc(id)}/logs`, undefined, (json) => {
    const { logs, truncated } = json as { logs: Array<{ stream: string; data: string }>; truncated: boolean };
    const text = capText(logs.map((l) => l.data).join(''), cap);
    return { logs: text.text, truncated, cutBytes: text.cutBytes };
  }));

  // ---- files -------------------------------------------------------------------------------

  server.registerTool('read_file', {
    description: `Read a file of the sandbox's container (as UTF-8 text; cut to its first and last ${cap / 2} bytes when longer).`,
    inputSchema: { sandboxId, path: z.string().describe('absolute path in the container') },
    outputSchema: z.object({ path: z.string(), content: z.string(), cutBytes: z.number().int() }),
    annotations: { ...READ_ONLY, title: 'Read a file' },
  }, async ({ sandboxId: id, path }) => {
    const r = await call('GET', `/v1/sandboxes/${enc(id)}/files?path=${enc(path)}`);
    if (!r.ok) return r.result;
    const text = capText(r.body, cap);
    return { content: [{ type: 'text', text: text.text }], structuredContent: { path, content: text.text, cutBytes: text.cutBytes } };
  });

  server.registerTool('write_file', {
    description: 'Write a file in the sandbox\'s container (parent directories are created; an existing file is replaced).',
    inputSchema: { sandboxId, path: z.string(), content: z.string() },
    outputSchema: FileEntry,
    annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false, title: 'Write a file' },
  }, async ({ sandboxId: id, path, content }) => {
    const r = await call('PUT', `/v1/sandboxes/${enc(id)}/files?path=${enc(path)}`, undefined, Buffer.from(content));
    if (!r.ok) return r.result;
    const entry = JSON.parse(r.body) as Json;
    return { content: [{ type: 'text', text: r.body }], structuredContent: entry };
  });

  server.registerTool('list_files', {
    description: 'List a directory of the sandbox\'s container.',
    inputSchema: { sandboxId, path: z.string() },
    outputSchema: z.object({ entries: z.array(FileEntry), truncated: z.boolean() }),
    annotations: { ...READ_ONLY, title: 'List a directory' },
  }, async ({ sandboxId: id, path }) => structured('GET', `/v1/sandboxes/${enc(id)}/fs/list?path=${enc(path)}`, undefined, (json) => json as Json));

  // ---- snapshots, fork ---------------------------------------------------------------------

  server.registerTool('fork_sandbox', {
    description: 'Snapshot a running sandbox and start COUNT clones of it (each sees the parent\'s files and processes as they were). Returns one entry per child: its sandbox, or its error.',
    inputSchema: { sandboxId, count: z.number().int().describe('1 to 100'), timeoutSec: z.number().int().optional() },
    outputSchema: z.object({ children: z.array(z.object({ sandbox: Sandbox.optional(), error: ApiErrorShape.optional() })) }),
    annotations: { ...ADDITIVE, title: 'Fork a sandbox' },
  }, async ({ sandboxId: id, ...rest }) => structured('POST', `/v1/sandboxes/${enc(id)}/fork`, stripUndefined(rest), (json) => ({ children: json })));

  server.registerTool('snapshot_sandbox', {
    description: 'Snapshot a running sandbox under a tag (create_sandbox with snapshot: TAG makes clones of it). The sandbox pauses for a moment and goes on.',
    inputSchema: { sandboxId, tag: z.string() },
    outputSchema: z.looseObject({ tag: z.string(), parent: z.string(), pauseMs: z.number() }),
    annotations: { ...ADDITIVE, title: 'Snapshot a sandbox' },
  }, async ({ sandboxId: id, tag }) => structured('POST', `/v1/sandboxes/${enc(id)}/snapshots`, { tag }, (json) => json as Json));

  server.registerTool('list_snapshots', {
    description: 'List the snapshots (each usable as create_sandbox\'s snapshot).',
    outputSchema: z.object({ snapshots: z.array(SnapshotInfo) }),
    annotations: { ...READ_ONLY, title: 'List snapshots' },
  }, async () => structured('GET', '/v1/snapshots', undefined, (json) => ({ snapshots: json })));

  server.registerTool('delete_snapshot', {
    description: 'Delete a snapshot (refused while clones of it run).',
    inputSchema: { tag: z.string().min(1).max(128) },
    outputSchema: z.object({ deleted: z.string() }),
    annotations: { readOnlyHint: false, destructiveHint: true, idempotentHint: true, openWorldHint: false, title: 'Delete a snapshot' },
  }, async ({ tag }) => structured('DELETE', `/v1/snapshots/${enc(tag)}`, undefined, () => ({ deleted: tag })));

  return { server, api };
}

/** The API's error answer as a tool error: `error (STATUS): message`. */
function apiError(status: number, body: string): CallToolResult {
  let message = body;
  try {
    const parsed = JSON.parse(body) as { error?: { message?: string } };
    message = parsed.error?.message ?? message;
  } catch {
    // not JSON
  }
  return { content: [{ type: 'text', text: `error (${status}): ${message.slice(0, 2000)}` }], isError: true };
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
