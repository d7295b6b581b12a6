/**
 * `shoal fork` refuses bad input before anything is paused (issue 13): a count outside 1..64, a
 * name prefix that is no valid name, or one whose children's names are taken. The source is a
 * record without a live supervisor: the checks come before the CLI asks the supervisor for a
 * snapshot, so a refusal here never reaches a VM. One line, exit 125, the state unchanged.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { StateStore } from '../../src/state/store';
import type { VmRecord } from '../../src/state/vm-record';
import { SHOAL_BIN } from '../helpers/shoal-cli';
import { tempDir } from '../helpers/temp-dir';

const stateDir = path.join(tempDir('fork-input-'), 'state');
const store = new StateStore(stateDir);

function addVm(name: string): void {
  const id = store.newId();
  store.claimName(name, id);
  const record: VmRecord = {
    id,
    config: { name, image: 'localhost/x', command: ['sleep', '1'], env: {}, cpus: 1, memoryMiB: 256, interactive: false, detach: true, autoRemove: false, network: 'none', publish: [] },
    backend: 'qemu',
    accel: 'tcg',
    state: 'running',
    createdAt: new Date().toISOString(),
  };
  store.write(record);
}
addVm('src');
addVm('src-2');

/** Every file under the state directory with its contents: what "nothing changed" compares. */
function snapshotOfState(): string {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else out.push(`${full}\n${fs.readFileSync(full, 'utf8')}`);
    }
  };
  walk(stateDir);
  return out.join('\n');
}

const cases: Array<[string[], RegExp]> = [
  [['-n', '0'], /^shoal: invalid -n "0": expected 1 to 64$/],
  [['-n', '-1'], /^shoal: .*-1/],
  [['-n', '1000'], /^shoal: invalid -n "1000": expected 1 to 64$/],
  [['-n', 'two'], /^shoal: invalid -n "two": expected 1 to 64$/],
  [['-n', '2'], /^shoal: the name "src-2" is already in use$/],
  [['-n', '1', '--name-prefix', '../x'], /^shoal: invalid --name-prefix: /],
  [['-n', '1', '--name-prefix', 'a'.repeat(200)], /^shoal: invalid --name-prefix: /],
];

for (const [args, message] of cases) {
  test(`fork src ${args.join(' ').slice(0, 40)}: one line, exit 125, nothing changed`, () => {
    const before = snapshotOfState();
    const r = spawnSync(SHOAL_BIN, ['fork', 'src', ...args], { env: { ...process.env, SHOAL_STATE_DIR: stateDir }, encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 125, r.stderr);
    const lines = r.stderr.split('\n').filter(Boolean);
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0]!, message);
    assert.equal(r.stdout, '');
    assert.equal(snapshotOfState(), before);
  });
}
