/**
 * podman's --env-file format: one KEY=VALUE a line, the value taken literally (quotes included,
 * as podman does); a bare KEY takes the host's value (absent on the host: not set); lines
 * starting with `#` (after leading blanks) and blank lines are skipped.
 */
import fs from 'node:fs';
import { ShoalError } from '../util/errors';

/** An env file is configuration, not data: a bound keeps a mistyped path to a huge file harmless. */
export const MAX_ENV_FILE_BYTES = 1 << 20;

const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

export function parseEnvFileText(text: string, file: string, hostEnv: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? '').replace(/\r$/, '').replace(/^[ \t\v\f]+/, '');
    if (line === '' || line.startsWith('#')) continue;
    const eq = line.indexOf('=');
    const key = eq < 0 ? line.trimEnd() : line.slice(0, eq);
    if (!NAME.test(key)) {
      throw new ShoalError(`invalid --env-file ${file} line ${i + 1}: "${key.slice(0, 64)}" is not a variable name`);
    }
    if (eq >= 0) env[key] = line.slice(eq + 1);
    else if (hostEnv[key] !== undefined) env[key] = hostEnv[key]!;
  }
  return env;
}

/** Reads and parses the files in order (later files override earlier ones, as in podman). */
export function readEnvFiles(files: string[], hostEnv: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const env: Record<string, string> = {};
  for (const file of files) {
    let text: string;
    try {
      const stat = fs.statSync(file);
      if (!stat.isFile()) throw new ShoalError(`invalid --env-file ${file}: not a regular file`);
      if (stat.size > MAX_ENV_FILE_BYTES) throw new ShoalError(`invalid --env-file ${file}: larger than ${MAX_ENV_FILE_BYTES} bytes`);
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      if (err instanceof ShoalError) throw err;
      throw new ShoalError(`invalid --env-file ${file}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
    }
    Object.assign(env, parseEnvFileText(text, file, hostEnv));
  }
  return env;
}
