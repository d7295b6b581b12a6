/**
 * The state directory, shared by any number of shoal processes at once (daemonless):
 *   vms/<id>/state.json   one VM's record (atomic rewrites)
 *   names/<name>          claim file holding the id; created with O_EXCL so that two
 *                         `shoal run --name x` racing each other cannot both win
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ShoalError } from '../util/errors';
import { isAlive } from '../util/process';
import { stateDir } from '../util/paths';
import { readJson, writeJsonAtomic } from './atomic';
import type { VmRecord, VmStatus } from './vm-record';

export class StateStore {
  constructor(readonly root: string = stateDir()) {}

  get vmsDir(): string {
    return path.join(this.root, 'vms');
  }

  get namesDir(): string {
    return path.join(this.root, 'names');
  }

  vmDir(id: string): string {
    return path.join(this.vmsDir, id);
  }

  newId(): string {
    return crypto.randomBytes(6).toString('hex');
  }

  /** Claims a name for an id; throws a user error when it is taken by a VM that still exists. */
  claimName(name: string, id: string): void {
    fs.mkdirSync(this.namesDir, { recursive: true });
    const claim = path.join(this.namesDir, name);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(claim, id, { flag: 'wx' });
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        const owner = this.idForName(name);
        if (owner && fs.existsSync(this.recordPath(owner))) {
          throw new ShoalError(`the name "${name}" is already in use by VM ${owner}; remove it with \`shoal rm ${name}\` or choose another name`);
        }
        // A claim left behind by a VM that was never fully created: take it over.
        this.releaseName(name, owner);
      }
    }
    throw new ShoalError(`could not claim the name "${name}"`);
  }

  /** Removes a name claim, only if it still belongs to the given id. */
  releaseName(name: string, id: string | undefined): void {
    const claim = path.join(this.namesDir, name);
    if (id !== undefined && this.idForName(name) !== id) return;
    fs.rmSync(claim, { force: true });
  }

  idForName(name: string): string | undefined {
    try {
      return fs.readFileSync(path.join(this.namesDir, name), 'utf8').trim() || undefined;
    } catch {
      return undefined;
    }
  }

  recordPath(id: string): string {
    return path.join(this.vmDir(id), 'state.json');
  }

  write(record: VmRecord): void {
    fs.mkdirSync(this.vmDir(record.id), { recursive: true });
    writeJsonAtomic(this.recordPath(record.id), record);
  }

  read(id: string): VmRecord | undefined {
    return readJson<VmRecord>(this.recordPath(id));
  }

  /** Applies a change to a record (the supervisor is the only writer while it lives). */
  update(id: string, change: (record: VmRecord) => void): VmRecord {
    const record = this.read(id);
    if (!record) throw new Error(`VM ${id} has no record`);
    change(record);
    this.write(record);
    return record;
  }

  /** Finds a VM by name, or by id (or a unique id prefix), like podman does. */
  find(nameOrId: string): VmRecord | undefined {
    const byName = this.idForName(nameOrId);
    if (byName) {
      const record = this.read(byName);
      if (record) return record;
    }
    if (!/^[0-9a-f]{3,}$/.test(nameOrId)) return undefined;
    const matches = this.ids().filter((id) => id.startsWith(nameOrId));
    return matches.length === 1 ? this.read(matches[0]!) : undefined;
  }

  /** Like find, but a missing VM is a user error. */
  get(nameOrId: string): VmRecord {
    const record = this.find(nameOrId);
    if (!record) throw new ShoalError(`no such VM: ${nameOrId}`);
    return record;
  }

  ids(): string[] {
    try {
      return fs.readdirSync(this.vmsDir).filter((entry) => fs.existsSync(this.recordPath(entry)));
    } catch {
      return [];
    }
  }

  list(): VmRecord[] {
    return this.ids()
      .map((id) => this.read(id))
      .filter((r): r is VmRecord => r !== undefined)
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  /** Deletes everything of a VM: its directory and its name claim. */
  remove(record: VmRecord): void {
    fs.rmSync(this.vmDir(record.id), { recursive: true, force: true });
    this.releaseName(record.config.name, record.id);
  }
}

/** What a VM is now: the recorded state, unless its supervisor is gone while it should run. */
export function statusOf(record: VmRecord): VmStatus {
  const active = record.state === 'creating' || record.state === 'starting' || record.state === 'running' || record.state === 'stopping';
  if (!active) return record.state;
  if (record.supervisorPid === undefined) return record.state === 'creating' ? 'creating' : 'dead';
  return isAlive(record.supervisorPid, record.supervisorStartTime) ? record.state : 'dead';
}
