/**
 * The import rule of docs/ARCHITECTURE.md ("Who may import whom"), checked on the source: each
 * folder of src/ imports only from folders on a lower line of the levels drawn there. The
 * levels are read from the document itself, so the drawing and the check cannot drift apart.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

const root = path.join(__dirname, '..', '..', '..');
const src = path.join(root, 'src');

/** folder -> level, from the fenced block after the "Who may import whom" heading. */
function levels(): Map<string, number> {
  const doc = fs.readFileSync(path.join(root, 'docs', 'ARCHITECTURE.md'), 'utf8');
  const section = doc.slice(doc.indexOf('## Who may import whom'));
  const block = /```\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(block, 'ARCHITECTURE.md has the levels block');
  const out = new Map<string, number>();
  for (const line of block.split('\n')) {
    const match = /^(\d+)\s+(.*)$/.exec(line.trim());
    if (!match) continue;
    for (const word of match[2]!.split(/\s+/)) {
      const folder = word.replace(/\(.*\)$/, '');
      if (/^[a-z][a-z0-9-]*$/.test(folder)) out.set(folder, Number(match[1]));
    }
  }
  return out;
}

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) return sources(full);
    return /\.ts$/.test(e.name) && !e.name.endsWith('.d.ts') ? [full] : [];
  });
}

/** The relative module specifiers of a file: import/export ... from, import(), require(). */
function specifiers(text: string): string[] {
  const out: string[] = [];
  const pattern = /(?:\bfrom\s+|\bimport\s*\(\s*|\brequire\s*\(\s*|^\s*import\s+)['"](\.[^'"]+)['"]/gm;
  for (let m = pattern.exec(text); m; m = pattern.exec(text)) out.push(m[1]!);
  return out;
}

test('every import in src/ goes to a folder on a lower line of ARCHITECTURE.md\'s levels', () => {
  const level = levels();
  assert.ok(level.size >= 15, `levels read: ${[...level.keys()].join(' ')}`);
  const violations: string[] = [];
  const folders = fs.readdirSync(src, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  for (const folder of folders) {
    assert.ok(level.has(folder), `src/${folder} has a line in ARCHITECTURE.md's levels`);
    for (const file of sources(path.join(src, folder))) {
      for (const spec of specifiers(fs.readFileSync(file, 'utf8'))) {
        const target = path.relative(src, path.resolve(path.dirname(file), spec)).split(path.sep);
        if (target[0] === '..' || target.length < 2) continue; // outside src/ (package.json, native build)
        const to = target[0]!;
        if (to === folder) continue;
        if (!level.has(to)) violations.push(`${path.relative(root, file)} imports src/${to}, which has no level`);
        else if (level.get(to)! >= level.get(folder)!) violations.push(`${path.relative(root, file)} (${folder}, ${level.get(folder)}) imports ${spec} (${to}, ${level.get(to)})`);
      }
    }
  }
  assert.deepEqual(violations, []);
});
