/**
 * The CLIs attached to a VM (src/supervisor/attachments.ts): a CLI whose attach request the
 * supervisor handles only after the VM ended (a start that failed at once) gets the progress and
 * the end, not a silent close ("lost the connection to the VM supervisor").
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import type { Channel } from '../../src/protocol/mux';
import { Attachments } from '../../src/supervisor/attachments';
import type { VmRecordHandle } from '../../src/supervisor/vm-record-handle';

class FakeChannel extends EventEmitter {
  readonly sent: unknown[] = [];
  closed = false;
  send(event: unknown): void { this.sent.push(event); }
  close(): void { this.closed = true; }
  setDataHandler(): void { /* no stdio here */ }
}

const record = { current: { id: 'abc', state: 'failed', config: { name: 'planted', interactive: false, tty: undefined } } } as unknown as VmRecordHandle;

test('a CLI attached before the end gets the error, then the close', () => {
  const attachments = new Attachments(record, () => undefined);
  const early = new FakeChannel();
  attachments.progress('booting');
  attachments.attach(early as unknown as Channel, true);
  attachments.end({ error: 'shoal-abc.ram exists already' });
  assert.deepEqual(early.sent, [{ type: 'progress', message: 'booting' }, { type: 'error', message: 'shoal-abc.ram exists already' }]);
  assert.ok(early.closed);
});

test('a CLI whose attach is handled after the end gets the progress and the end at once', () => {
  const attachments = new Attachments(record, () => undefined);
  attachments.progress('booting');
  attachments.end({ error: 'shoal-abc.ram exists already' });
  const late = new FakeChannel();
  attachments.attach(late as unknown as Channel, true);
  assert.deepEqual(late.sent, [{ type: 'progress', message: 'booting' }, { type: 'error', message: 'shoal-abc.ram exists already' }]);
  assert.ok(late.closed);
  const exited = new Attachments(record, () => undefined);
  exited.end({ exitCode: 3 });
  const later = new FakeChannel();
  exited.attach(later as unknown as Channel, false);
  assert.deepEqual(later.sent, [{ type: 'exit', code: 3 }]);
});
