/**
 * What a fake Firecracker recorded (FAKE_FC_RECORD: one JSON line per exchange), for tests that
 * check the requests shoal sent and that each, and its answer, was on Firecracker's spec.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import type { Exchange } from './firecracker-fake';

export function readExchanges(record: string): Exchange[] {
  if (!fs.existsSync(record)) return [];
  return fs.readFileSync(record, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Exchange);
}

export function assertExchangesOnSpec(exchanges: Exchange[]): void {
  for (const e of exchanges) {
    assert.deepEqual(e.problems, [], `request off-spec: ${e.method} ${e.path} ${JSON.stringify(e.body)}`);
    assert.deepEqual(e.responseProblems, [], `response off-spec: ${e.method} ${e.path}`);
  }
}
