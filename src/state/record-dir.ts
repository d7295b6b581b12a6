/**
 * A directory of small private JSON records, one file per key (<dir>/<key>.json, 0600 in a 0700
 * directory, written atomically): what a front end keeps about something that has no VM (a
 * paused sandbox). Keys are checked before they become file names; a record is read without
 * following symlinks and only up to a size cap, and handed to the caller's parser, which checks
 * it field by field (a file under the state directory is input like any other).
 */
import fs from 'node:fs';
import path from 'node:path';
import { ensurePrivateDir } from '../util/private-fs';
import { writeJsonAtomic } from './atomic';

/** Keys the directory accepts as file names (the ids and names shoal makes and accepts). */
const KEY = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
const MAX_BYTES = 256 * 1024;

export class RecordDir<T> {
  constructor(
    readonly dir: string,
    /** The record stored under `key`, or undefined if the text is not one. */
    private readonly parse: (raw: string, key: string) => T | undefined,
  ) {}

  static validKey(key: string): boolean {
    return KEY.test(key);
  }

  private file(key: string): string | undefined {
    return KEY.test(key) ? path.join(this.dir, `${key}.json`) : undefined;
  }

  get(key: string): T | undefined {
    const file = this.file(key);
    if (!file) return undefined;
    let raw: string;
    try {
      const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
      try {
        if (fs.fstatSync(fd).size > MAX_BYTES) return undefined;
        raw = fs.readFileSync(fd, 'utf8');
      } finally {
        fs.closeSync(fd);
      }
    } catch {
      return undefined;
    }
    return this.parse(raw, key);
  }

  list(): T[] {
    let names: string[];
    try {
      names = fs.readdirSync(this.dir);
    } catch {
      return [];
    }
    const out: T[] = [];
    for (const name of names) {
      if (!name.endsWith('.json') || name.startsWith('.')) continue;
      const record = this.get(name.slice(0, -5));
      if (record !== undefined) out.push(record);
    }
    return out;
  }

  put(key: string, record: T): void {
    const file = this.file(key);
    if (!file) throw new Error(`unusable record key ${JSON.stringify(key)}`);
    ensurePrivateDir(this.dir);
    writeJsonAtomic(file, record);
  }

  remove(key: string): void {
    const file = this.file(key);
    if (file) fs.rmSync(file, { force: true });
  }
}

/** A record's fields, checked one by one by the parsers RecordDir is given. */
export const field = {
  /** The string values of an object (others dropped); {} for anything else. */
  stringMap(value: unknown): Record<string, string> {
    const out: Record<string, string> = {};
    if (value && typeof value === 'object') for (const [k, v] of Object.entries(value)) if (typeof v === 'string') out[k] = v;
    return out;
  },
  positiveInt(value: unknown, fallback: number): number {
    return typeof value === 'number' && Number.isInteger(value) && value > 0 ? value : fallback;
  },
  /** An ISO date as given, or the epoch for anything that is not a date. */
  date(value: unknown): string {
    return typeof value === 'string' && !Number.isNaN(Date.parse(value)) ? value : new Date(0).toISOString();
  },
  stringOrNull(value: unknown): string | null {
    return typeof value === 'string' ? value : null;
  },
};
