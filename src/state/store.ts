/**
 * The state directory, shared by any number of shoal processes at once (daemonless):
 *   vms/<id>/state.json   one VM's record (atomic rewrites)
 *   names/<name>          claim file holding the id (and the claiming process); created with
 *                         O_EXCL so that two `shoal run --name x` racing each other cannot both win
 * The root is mode 0700: records hold `-e` values, VM directories hold guest disks and logs.
 * Names and ids are validated before any path is built from them (src/state/names.ts).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ShoalError } from '../util/errors';
import { isAlive } from '../util/process';
import { stateDir } from '../util/paths';
import { ensurePrivateDir } from '../util/private-fs';
import { processStartTime } from '../util/process';
import { createWhole, readJson, writeJsonAtomic } from './atomic';
import { nameOrIdProblem, validateVmId } from './names';
import { nameProblem, type VmRecord, type VmStatus } from './vm-record';

export class StateStore {
  constructor(readonly root: string = stateDir()) {}

  get vmsDir(): string {
    return path.join(this.root, 'vms');
  }

  get namesDir(): string {
    return path.join(this.root, 'names');
  }

  vmDir(id: string): string {
    // Every path of a VM derives from here: an id that is not 12 hex characters never becomes one.
    if (!validateVmId(id)) throw new ShoalError(`invalid VM id "${id}"`);
    return path.join(this.vmsDir, id);
  }

  /** The root and the given subdirectory, 0700 (see src/util/private-fs.ts). */
  ensureDir(sub?: string): string {
    ensurePrivateDir(this.root);
    if (sub === undefined) return this.root;
    const dir = path.join(this.root, sub);
    ensurePrivateDir(dir);
    return dir;
  }

  private claimPath(name: string): string {
    const problem = nameProblem(name);
    if (problem) throw new ShoalError(`invalid VM name: ${problem}`);
    return path.join(this.namesDir, name);
  }

  newId(): string {
    return crypto.randomBytes(6).toString('hex');
  }

  /**
   * Claims a name for an id; throws a user error when it is taken by a VM that still exists, or
   * by a `shoal` process that is still creating one (its record may not be written yet). A claim
   * whose creator died before writing a record is taken over, by one taker only.
   */
  claimName(name: string, id: string): void {
    const claim = this.claimPath(name);
    this.ensureDir('names');
    const startTime = processStartTime(process.pid) ?? '';
    const content = `${id}\n${process.pid} ${startTime}\n`;
    for (let attempt = 0; attempt < 3; attempt++) {
      if (createWhole(claim, content)) return;
      const holder = this.readClaim(name);
      if (holder && (fs.existsSync(this.recordPath(holder.id)) || (holder.pid !== undefined && isAlive(holder.pid, holder.startTime)))) {
        throw new ShoalError(`the name "${name}" is already in use by VM ${holder.id}; remove it with \`shoal rm ${name}\` or choose another name`);
      }
      // A claim left behind by a creator that died: move it aside (rename is atomic, so of two
      // takers only one gets this file) and check that what was moved is still that stale claim.
      const aside = `${claim}.reap-${id}`;
      try {
        fs.renameSync(claim, aside);
      } catch {
        continue; // someone else moved it: try to create again
      }
      const moved = this.readClaimFile(aside);
      if (moved && holder && moved.id !== holder.id) {
        // A fresh claim slipped in between: put it back, it is not ours to take.
        try {
          fs.linkSync(aside, claim);
        } catch {
          // yet another claim took its place; that one stands
        }
        fs.rmSync(aside, { force: true });
        throw new ShoalError(`the name "${name}" is already in use by VM ${moved.id}; remove it with \`shoal rm ${name}\` or choose another name`);
      }
      fs.rmSync(aside, { force: true });
    }
    throw new ShoalError(`could not claim the name "${name}"`);
  }

  /** Removes a name claim, only if it still belongs to the given id. */
  releaseName(name: string, id: string | undefined): void {
    if (nameProblem(name)) return;
    const claim = path.join(this.namesDir, name);
    if (id !== undefined && this.idForName(name) !== id) return;
    fs.rmSync(claim, { force: true });
  }

  idForName(name: string): string | undefined {
    return this.readClaim(name)?.id;
  }

  private readClaim(name: string): { id: string; pid?: number; startTime?: string } | undefined {
    if (nameProblem(name)) return undefined;
    return this.readClaimFile(path.join(this.namesDir, name));
  }

  /** A claim's content: the id (which must be a valid id), then the claiming process, if recorded. */
  private readClaimFile(file: string): { id: string; pid?: number; startTime?: string } | undefined {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch {
      return undefined;
    }
    const [idLine = '', ownerLine = ''] = text.split('\n');
    const id = idLine.trim();
    if (!validateVmId(id)) return undefined;
    const [pid, startTime] = ownerLine.trim().split(' ');
    const claim: { id: string; pid?: number; startTime?: string } = { id };
    if (pid && /^\d+$/.test(pid)) claim.pid = Number(pid);
    if (startTime) claim.startTime = startTime;
    return claim;
  }

  recordPath(id: string): string {
    return path.join(this.vmDir(id), 'state.json');
  }

  write(record: VmRecord): void {
    if (record.state === 'creating' && record.supervisorPid === undefined && record.creatorPid === undefined) {
      record.creatorPid = process.pid;
      const startTime = processStartTime(process.pid);
      if (startTime !== undefined) record.creatorStartTime = startTime;
    }
    this.ensureDir('vms');
    const dir = this.vmDir(record.id);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeJsonAtomic(this.recordPath(record.id), record);
  }

  read(id: string): VmRecord | undefined {
    if (!validateVmId(id)) return undefined;
    const record = readJson<VmRecord>(this.recordPath(id));
    // A record is only believed for the directory it sits in.
    return record && typeof record === 'object' && record.id === id ? record : undefined;
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
    if (nameOrIdProblem(nameOrId)) return undefined;
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
    const problem = nameOrIdProblem(nameOrId);
    if (problem) throw new ShoalError(`invalid VM name or id: ${problem}`);
    const record = this.find(nameOrId);
    if (!record) throw new ShoalError(`no such VM: ${nameOrId}`);
    return record;
  }

  ids(): string[] {
    try {
      return fs.readdirSync(this.vmsDir).filter((entry) => validateVmId(entry) && fs.existsSync(this.recordPath(entry)));
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
  if (record.supervisorPid === undefined) {
    // Still being created: alive as long as the process creating it is.
    if (record.state !== 'creating') return 'dead';
    return record.creatorPid === undefined || isAlive(record.creatorPid, record.creatorStartTime) ? 'creating' : 'dead';
  }
  return isAlive(record.supervisorPid, record.supervisorStartTime) ? record.state : 'dead';
}

