/**
 * The agent's path resolution inside a container root (src/agent/files.ts), on a real directory
 * tree with hostile symlinks: nothing resolves outside the root, however it is spelled.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, it } from 'node:test';
import { resolveInRoot } from '../../src/agent/files';
import { containerPathComponents } from '../../src/protocol/files';

let base: string;
let root: string;

before(() => {
  base = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-files-'));
  root = path.join(base, 'root');
  fs.mkdirSync(path.join(root, 'etc'), { recursive: true });
  fs.mkdirSync(path.join(root, 'data'));
  fs.writeFileSync(path.join(root, 'etc', 'passwd'), 'container passwd');
  fs.writeFileSync(path.join(base, 'secret'), 'outside');
  fs.symlinkSync('/etc/passwd', path.join(root, 'data', 'abs'));
  fs.symlinkSync('../../../../secret', path.join(root, 'data', 'dotdot'));
  fs.symlinkSync('/', path.join(root, 'data', 'rootlink'));
  fs.symlinkSync('loop2', path.join(root, 'data', 'loop1'));
  fs.symlinkSync('loop1', path.join(root, 'data', 'loop2'));
  fs.writeFileSync(path.join(root, 'data', 'file'), 'x');
});

after(() => fs.rmSync(base, { recursive: true, force: true }));

const resolve = (p: string, options = { followLast: true, createParents: false }) => {
  const parsed = containerPathComponents(p);
  if ('problem' in parsed) throw new Error(parsed.problem);
  return resolveInRoot(root, parsed.components, options);
};

it('refuses .. and relative paths by their spelling', () => {
  assert.match((containerPathComponents('/a/../b') as { problem: string }).problem, /outside the container/);
  assert.match((containerPathComponents('a/b') as { problem: string }).problem, /not absolute/);
  assert.match((containerPathComponents('/a\0b') as { problem: string }).problem, /NUL/);
  assert.deepEqual(containerPathComponents('//a/./b/'), { components: ['a', 'b'] });
});

it('an absolute symlink resolves inside the container root', async () => {
  const r = await resolve('/data/abs');
  assert.equal(r.containerPath, '/etc/passwd');
  assert.equal(fs.readFileSync(r.hostPath, 'utf8'), 'container passwd');
});

it('a symlink climbing with .. stops at the container root', async () => {
  const r = await resolve('/data/dotdot');
  assert.equal(r.containerPath, '/secret');
  assert.equal(r.hostPath, path.join(root, 'secret'));
  assert.equal(fs.existsSync(r.hostPath), false, 'the host file beside the root is not reached');
  const through = await resolve('/data/rootlink/etc/passwd');
  assert.equal(through.hostPath, path.join(root, 'etc', 'passwd'));
});

it('symlink loops and files used as directories fail', async () => {
  await assert.rejects(resolve('/data/loop1'), /too many symbolic links/);
  await assert.rejects(resolve('/data/file/x'), /not a directory/);
  await assert.rejects(resolve('/nope/x'), /no such directory/);
});

it('the last component is not followed when asked not to, and parents can be made', async () => {
  const r = await resolve('/data/abs', { followLast: false, createParents: false });
  assert.equal(r.containerPath, '/data/abs');
  const made = await resolve('/new/deep/file.txt', { followLast: true, createParents: true });
  assert.equal(made.hostPath, path.join(root, 'new', 'deep', 'file.txt'));
  assert.ok(fs.statSync(path.join(root, 'new', 'deep')).isDirectory());
  // Parents made through a symlink to / land in the root too.
  const viaLink = await resolve('/data/rootlink/made/here', { followLast: true, createParents: true });
  assert.equal(viaLink.hostPath, path.join(root, 'made', 'here'));
});
