/** Every path under root (root itself as ''), with its lstat, descending only into real directories. */
import fs from 'node:fs';
import path from 'node:path';

export function walkTree(root: string): Array<{ rel: string; st: fs.Stats }> {
  const out: Array<{ rel: string; st: fs.Stats }> = [];
  const go = (rel: string): void => {
    const st = fs.lstatSync(path.join(root, rel));
    out.push({ rel, st });
    if (st.isDirectory()) for (const n of fs.readdirSync(path.join(root, rel))) go(path.join(rel, n));
  };
  go('');
  return out;
}
