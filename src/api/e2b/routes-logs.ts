/**
 * E2B's logs and metrics routes. Logs: what the sandbox's container printed (its container log,
 * read with the bounded log reader), one entry per line; shoal keeps no per-line time, so every
 * entry carries the log file's last change. Metrics: shoal samples none yet, so the list is
 * empty (what E2B answers before its first sample), not invented numbers.
 */
import fs from 'node:fs';
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { Core } from '../core';
import { readLog } from '../log-reader';
import { notFound } from './errors';
import type { E2bSandboxes } from './sandboxes';
import * as S from './schemas';

const MAX_LOG_BYTES = 1024 * 1024;

export function registerLogRoutes(app: FastifyInstance, core: Core, sandboxes: E2bSandboxes): void {
  const lines = (sandboxId: string, query: { limit?: string; start?: string }): Array<{ timestamp: string; line: string; level: string }> => {
    const found = sandboxes.find(sandboxId);
    if (!found) throw notFound(`sandbox ${sandboxId} not found`);
    if (found.state !== 'running') return [];
    const file = core.logFile(found.vm.id);
    let timestamp: string;
    try {
      timestamp = fs.statSync(file).mtime.toISOString();
    } catch {
      return [];
    }
    if (query.start !== undefined && Date.parse(timestamp) < Number(query.start)) return [];
    const out: Array<{ timestamp: string; line: string; level: string }> = [];
    for (const record of readLog(file, MAX_LOG_BYTES).records) {
      for (const line of record.data.toString('utf8').split('\n')) {
        if (line !== '') out.push({ timestamp, line, level: record.stream === 'stderr' ? 'error' : 'info' });
      }
    }
    const limit = query.limit === undefined ? 1000 : Number(query.limit);
    return out.slice(Math.max(0, out.length - limit));
  };

  app.get('/sandboxes/:sandboxID/logs', { schema: { params: S.SandboxIdParams, querystring: S.LogsQuery, response: { 200: S.SandboxLogs } } }, async (request) => {
    const entries = lines((request.params as { sandboxID: string }).sandboxID, request.query as { limit?: string; start?: string });
    return {
      logs: entries.map(({ timestamp, line }) => ({ timestamp, line })),
      logEntries: entries.map(({ timestamp, line, level }) => ({ timestamp, message: line, level, fields: {} })),
    };
  });

  app.get('/v2/sandboxes/:sandboxID/logs', { schema: { params: S.SandboxIdParams, querystring: S.LogsQuery, response: { 200: S.SandboxLogsV2 } } }, async (request) => {
    const entries = lines((request.params as { sandboxID: string }).sandboxID, request.query as { limit?: string; start?: string });
    return { logs: entries.map(({ timestamp, line, level }) => ({ timestamp, message: line, level, fields: {} })) };
  });

  app.get('/sandboxes/:sandboxID/metrics', { schema: { params: S.SandboxIdParams, querystring: S.MetricsQuery, response: { 200: Type.Array(Type.Unknown()) } } }, async (request) => {
    const { sandboxID } = request.params as { sandboxID: string };
    if (!sandboxes.find(sandboxID)) throw notFound(`sandbox ${sandboxID} not found`);
    return [];
  });
}
