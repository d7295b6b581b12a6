/** The per-process event ring: bounded in events and bytes, resumable, honest about what fell out. */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { EventRing } from '../../src/api/ring';
import { OutputCollector } from '../../src/api/processes';

it('keeps the newest events within its limits and counts what a late reader missed', () => {
  const ring = new EventRing({ maxEvents: 3, maxBytes: 10_000 });
  for (let i = 0; i < 5; i++) ring.push({ type: 'stdout', data: `line ${i}\n` });
  assert.equal(ring.firstId, 3);
  assert.equal(ring.lastId, 5);
  const late = ring.after(0);
  assert.equal(late.missed, 2);
  assert.deepEqual(late.events.map((e) => e.id), [3, 4, 5]);
  assert.deepEqual(ring.after(4), { events: [{ id: 5, event: { type: 'stdout', data: 'line 4\n' } }], missed: 0 });
});

it('is bounded in bytes, and closed by the exit', async () => {
  const ring = new EventRing({ maxEvents: 1000, maxBytes: 1000 });
  for (let i = 0; i < 50; i++) ring.push({ type: 'stderr', data: 'x'.repeat(100) });
  assert.ok(ring.after(0).events.length <= 7);
  const waiting = ring.waitAfter(ring.lastId);
  ring.push({ type: 'exit', exitCode: 0, signal: null });
  await waiting.ready;
  assert.equal(ring.closed, true);
  ring.push({ type: 'stdout', data: 'after the end' });
  assert.equal(ring.after(ring.lastId - 1).events[0]!.event.type, 'exit');
});

it('the buffered collector caps each stream and says so', () => {
  const c = new OutputCollector(5);
  c.add('stdout', 'abc');
  c.add('stdout', 'defgh');
  c.add('stderr', 'ok');
  assert.equal(c.stdout, 'abcde');
  assert.equal(c.stderr, 'ok');
  assert.equal(c.truncated, true);
});
