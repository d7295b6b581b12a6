/**
 * Small hardening of `shoal serve`: the token file is checked and read through one descriptor
 * (no link followed), an event stream that goes away leaves no waiter on its idle process, and
 * terminal input reaches the guest in order with a bounded queue (the socket is paused).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type { ServerResponse } from 'node:http';
import { describe, it } from 'node:test';
import type { ProcessEnd, RemoteProcess } from '../../src/api/core';
import { EventRing } from '../../src/api/ring';
import { PTY_INPUT_HIGH, PtyInput, streamRing } from '../../src/api/server';
import { loadOrCreateToken } from '../../src/api/token';
import { tempDir } from '../helpers/temp-dir';

describe('token file', () => {
  it('is created 0600, read back, and refused as a link, with loose modes, or too large', () => {
    const dir = tempDir('shoal-token-');
    const file = path.join(dir, 'api-token');
    const token = loadOrCreateToken(file);
    assert.match(token, /^[0-9a-f]{64}$/);
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.equal(loadOrCreateToken(file), token);
    const link = path.join(dir, 'link');
    fs.symlinkSync(file, link);
    assert.throws(() => loadOrCreateToken(link), /is a symbolic link/);
    fs.chmodSync(file, 0o640);
    assert.throws(() => loadOrCreateToken(file), /readable or writable by others/);
    fs.chmodSync(file, 0o600);
    fs.writeFileSync(file, 'x'.repeat(5000));
    assert.throws(() => loadOrCreateToken(file), /larger than 4096/);
    const fifo = path.join(dir, 'fifo');
    fs.mkdirSync(fifo);
    assert.throws(() => loadOrCreateToken(fifo), /not a regular file/);
  });
});

describe('event streams', () => {
  it('a client that leaves an idle process\'s stream leaves no waiter behind', async () => {
    const ring = new EventRing();
    ring.push({ type: 'start', pid: 1 });
    for (let i = 0; i < 20; i += 1) {
      const res = new PassThrough();
      res.resume();
      const streaming = streamRing(res as unknown as ServerResponse, ring, 0);
      await new Promise((r) => setImmediate(r));
      res.emit('close');
      await streaming;
    }
    assert.equal(ring.waiting, 0, 'waiters left by gone clients');
  });
});

describe('terminal input', () => {
  it('reaches the guest in order, one write at a time, and pauses the socket past the bound', async () => {
    const written: Buffer[] = [];
    let inFlight = 0;
    let maxInFlight = 0;
    const releases: Array<() => void> = [];
    const target = {
      writeStdin: (data: Buffer): Promise<void> => {
        inFlight += 1;
        maxInFlight = Math.max(maxInFlight, inFlight);
        written.push(data);
        // The guest's credit comes back later, in any order of timers.
        return new Promise<void>((resolve) => releases.push(() => { inFlight -= 1; resolve(); }));
      },
    } as unknown as RemoteProcess & { done: Promise<ProcessEnd> };
    const calls: string[] = [];
    const input = new PtyInput({ pause: () => calls.push('pause'), resume: () => calls.push('resume') });
    const chunk = 32 * 1024;
    const count = Math.ceil((PTY_INPUT_HIGH * 2) / chunk);
    for (let i = 0; i < count; i += 1) input.push(target, Buffer.alloc(chunk, i));
    assert.deepEqual(calls, ['pause'], 'the socket is paused once the queue passes the bound');
    assert.ok(input.queuedBytes <= count * chunk);
    while (written.length < count || releases.length > 0) {
      const release = releases.shift();
      if (!release) {
        await new Promise((r) => setImmediate(r));
        continue;
      }
      release();
      await new Promise((r) => setImmediate(r));
    }
    assert.equal(maxInFlight, 1, 'one write waits for the guest at a time');
    assert.deepEqual(written.map((b) => b[0]), Array.from({ length: count }, (_, i) => i), 'in order');
    assert.deepEqual(calls, ['pause', 'resume']);
    assert.equal(input.queuedBytes, 0);
  });
});
