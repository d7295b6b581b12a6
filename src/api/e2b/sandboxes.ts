/**
 * E2B's sandbox operations over shoal's Core: create (a clone of a template's snapshot), get,
 * list, kill, timeouts, pause (snapshot, then the VM goes), connect/resume (a clone of that
 * snapshot under the same name, so the same sandboxId), fork and snapshots. Routes only
 * translate HTTP to these calls.
 *
 * Where things live: a running sandbox is a VM named by its sandboxId, with its E2B facts in
 * e2b.json and its metadata and expiry in the native API's api.json (so the native reaper and
 * listings see them); a paused one is a snapshot tagged e2b-paused-<sandboxId> plus a record in
 * the paused store. Operations on one sandbox run one at a time (pause racing kill or resume
 * would otherwise leave a VM and a paused record, or neither).
 */
import crypto from 'node:crypto';
import type { Core, VmView } from '../core';
import { readFacts, writeFacts } from '../facts';
import { conflict, notFound, badRequest, E2bApiError, e2bErrorOf } from './errors';
import type { PausedSandbox, PausedStore } from './paused-store';
import { newAccessToken, readE2bFacts, writeE2bFacts, type E2bFacts } from './sandbox-facts';
import type * as S from './schemas';
import { isReservedTag, PAUSED_TAG_PREFIX, type Templates } from './templates';
import { KeyedLock } from '../../util/keyed-lock';

/**
 * The envd version shoal's envd answers as: the SDK turns features on by it (0.5.7 octet-stream
 * uploads, 0.6.2 metadata, 0.6.3 watch events with their entry, 0.6.4 watching network mounts),
 * all of which src/api/e2b/envd serves.
 */
export const ENVD_VERSION = '0.6.4';
const CLIENT_ID = 'shoal';
/** E2B's default when create names no timeout (seconds). */
export const DEFAULT_TIMEOUT_SEC = 300;

export interface E2bOptions {
  /** `--domain`: getHost's base domain, returned to the SDK as the sandbox's domain. */
  domain: string | null;
}

type Found =
  | { state: 'running'; vm: VmView; facts: E2bFacts }
  | { state: 'paused'; paused: PausedSandbox };

export class E2bSandboxes {
  private readonly lock = new KeyedLock();

  constructor(
    private readonly core: Core,
    readonly templates: Templates,
    private readonly paused: PausedStore,
    private readonly options: E2bOptions,
  ) {}

  // ---- lookups ----------------------------------------------------------------------------

  /** A running E2B sandbox (a VM with this name and E2B facts naming it), or a paused one. */
  find(sandboxId: string): Found | undefined {
    const vm = this.core.find(sandboxId);
    if (vm && vm.name === sandboxId) {
      const facts = readE2bFacts(this.core.vmDir(vm.id));
      if (facts && facts.sandboxId === sandboxId && isLive(vm)) return { state: 'running', vm, facts };
    }
    const paused = this.paused.get(sandboxId);
    return paused ? { state: 'paused', paused } : undefined;
  }

  private mustFind(sandboxId: string): Found {
    const found = this.find(sandboxId);
    if (!found) throw notFound(`sandbox ${sandboxId} not found`);
    return found;
  }

  detail(sandboxId: string): S.SandboxDetail {
    const found = this.mustFind(sandboxId);
    const facts = found.state === 'running' ? found.facts : found.paused.facts;
    return {
      ...this.listed(found),
      envdAccessToken: facts.envdAccessToken,
      domain: this.options.domain,
      lifecycle: { autoResume: false, onTimeout: facts.autoPause ? 'pause' : 'kill' },
    };
  }

  private listed(found: Found): S.ListedSandbox {
    if (found.state === 'running') {
      const { vm, facts } = found;
      const api = readFacts(this.core.vmDir(vm.id));
      return {
        ...this.identity(facts),
        startedAt: vm.createdAt,
        endAt: api.expiresAt ?? new Date(8.64e15).toISOString(),
        cpuCount: vm.cpus,
        memoryMB: vm.memoryMiB,
        diskSizeMB: 0,
        metadata: api.metadata,
        state: 'running',
        envdVersion: ENVD_VERSION,
        volumeMounts: [],
      };
    }
    const p = found.paused;
    return {
      ...this.identity(p.facts),
      startedAt: p.startedAt,
      endAt: p.pausedAt,
      cpuCount: p.cpus,
      memoryMB: p.memoryMiB,
      diskSizeMB: 0,
      metadata: p.metadata,
      state: 'paused',
      envdVersion: ENVD_VERSION,
      volumeMounts: [],
    };
  }

  private identity(facts: E2bFacts): { templateID: string; sandboxID: string; clientID: string; alias?: string } {
    return {
      templateID: facts.templateId,
      sandboxID: facts.sandboxId,
      clientID: CLIENT_ID,
      ...(this.templates.aliases.has(facts.templateId) ? { alias: facts.templateId } : {}),
    };
  }

  private reply(facts: E2bFacts): S.Sandbox {
    return {
      ...this.identity(facts),
      envdVersion: ENVD_VERSION,
      envdAccessToken: facts.envdAccessToken,
      trafficAccessToken: facts.trafficAccessToken,
      domain: this.options.domain,
    };
  }

  /** Every E2B sandbox, running and paused, newest first. */
  all(): S.ListedSandbox[] {
    const out: S.ListedSandbox[] = [];
    const running = new Set<string>();
    for (const vm of this.core.list()) {
      if (!isLive(vm)) continue;
      const facts = readE2bFacts(this.core.vmDir(vm.id));
      if (!facts || facts.sandboxId !== vm.name) continue;
      running.add(vm.name);
      out.push(this.listed({ state: 'running', vm, facts }));
    }
    for (const paused of this.paused.list()) {
      if (!running.has(paused.facts.sandboxId)) out.push(this.listed({ state: 'paused', paused }));
    }
    return out;
  }

  // ---- create, kill, timeouts -------------------------------------------------------------

  async create(body: S.NewSandbox): Promise<S.Sandbox> {
    if (body.volumeMounts !== undefined && body.volumeMounts.length > 0) throw badRequest('volume mounts are not supported by shoal');
    if (body.mcp !== undefined && body.mcp !== null) throw badRequest('the MCP gateway is not supported by shoal');
    // Of E2B's network settings only allowPublicTraffic (getHost wants the traffic token when false).
    const network = (body.network ?? {}) as Record<string, unknown>;
    const unsupported = Object.keys(network).filter((k) => k !== 'allowPublicTraffic');
    if (unsupported.length > 0) throw badRequest(`network ${unsupported.join(', ')} not supported by shoal`);
    if (network.allowPublicTraffic !== undefined && typeof network.allowPublicTraffic !== 'boolean') throw badRequest('network.allowPublicTraffic must be a boolean');
    const secure = body.secure === true || network.allowPublicTraffic === false;
    if (body.autoResume?.enabled === true) throw badRequest('autoResume is not supported by shoal: resume a paused sandbox with connect');
    if (body.autoPauseMemory === false) throw badRequest('autoPauseMemory: false is not supported by shoal (a pause always keeps memory)');
    const template = await this.templates.resolve(body.templateID);
    const sandboxId = newSandboxId();
    const facts: E2bFacts = {
      sandboxId,
      templateId: template.templateId,
      envdAccessToken: newAccessToken(),
      secure,
      trafficAccessToken: secure ? newAccessToken() : null,
      autoPause: body.autoPause === true,
      defaultUser: 'user',
      envVars: body.envVars ?? {},
    };
    return this.lock.run(sandboxId, async () => {
      const vm = await this.clone(template.snapshotTag, sandboxId);
      this.adopt(vm, facts, { metadata: body.metadata ?? {}, timeoutSec: body.timeout ?? DEFAULT_TIMEOUT_SEC, parentId: null });
      return this.reply(facts);
    });
  }

  /** A clone of the snapshot named sandboxId; a failed boot is a 503 for E2B's clients to retry or report. */
  private async clone(snapshotTag: string, name: string): Promise<VmView> {
    try {
      return await this.core.create({ name, snapshot: snapshotTag, cpus: 1, memoryMiB: 512, env: {}, cmd: [], network: 'rootless', publish: [] });
    } catch (err) {
      const e = e2bErrorOf(err);
      throw e.status === 409 ? new E2bApiError(503, `the sandbox could not start: ${e.message}`) : e;
    }
  }

  /** Writes what makes a VM this E2B sandbox (its e2b.json and api.json). */
  private adopt(vm: VmView, facts: E2bFacts, api: { metadata: Record<string, string>; timeoutSec: number; parentId: string | null }): void {
    const dir = this.core.vmDir(vm.id);
    writeE2bFacts(dir, facts);
    writeFacts(dir, { metadata: api.metadata, expiresAt: expiry(api.timeoutSec), parentId: api.parentId });
  }

  /** Kills a running sandbox or forgets a paused one (its snapshot too). */
  kill(sandboxId: string): Promise<void> {
    return this.lock.run(sandboxId, async () => {
      const found = this.mustFind(sandboxId);
      if (found.state === 'running') {
        await this.core.remove(found.vm.id);
        return;
      }
      this.forgetPaused(found.paused);
    });
  }

  private forgetPaused(paused: PausedSandbox): void {
    this.paused.remove(paused.facts.sandboxId);
    if (this.core.snapshots().some((s) => s.tag === paused.snapshotTag)) this.core.removeSnapshot(paused.snapshotTag, { force: true });
  }

  /** E2B's setTimeout: the sandbox now ends timeoutSec from now (sooner or later than before). */
  setTimeout(sandboxId: string, timeoutSec: number): Promise<void> {
    return this.lock.run(sandboxId, async () => {
      const found = this.mustFind(sandboxId);
      if (found.state !== 'running') throw notFound(`sandbox ${sandboxId} is paused`);
      const dir = this.core.vmDir(found.vm.id);
      writeFacts(dir, { ...readFacts(dir), expiresAt: expiry(timeoutSec) });
    });
  }

  /** E2B's refresh: keeps the sandbox at least durationSec longer; never shortens its life. */
  refresh(sandboxId: string, durationSec: number): Promise<void> {
    return this.lock.run(sandboxId, async () => {
      const found = this.mustFind(sandboxId);
      if (found.state !== 'running') throw notFound(`sandbox ${sandboxId} is paused`);
      const dir = this.core.vmDir(found.vm.id);
      const api = readFacts(dir);
      const wanted = Date.now() + durationSec * 1000;
      if (api.expiresAt === null || Date.parse(api.expiresAt) < wanted) writeFacts(dir, { ...api, expiresAt: new Date(wanted).toISOString() });
    });
  }

  // ---- pause, connect, resume -------------------------------------------------------------

  /** Memory + disk snapshot, then the VM goes. False if it was already paused (E2B's 409). */
  pause(sandboxId: string): Promise<boolean> {
    return this.lock.run(sandboxId, async () => {
      const found = this.mustFind(sandboxId);
      if (found.state === 'paused') return false;
      await this.pauseRunning(found.vm, found.facts);
      return true;
    });
  }

  private async pauseRunning(vm: VmView, facts: E2bFacts): Promise<void> {
    const tag = `${PAUSED_TAG_PREFIX}${facts.sandboxId}`;
    // A snapshot left by a pause that died before it recorded it (the VM still ran): replaced.
    if (this.core.snapshots().some((s) => s.tag === tag)) this.core.removeSnapshot(tag, { force: true });
    await this.core.snapshot(vm.id, tag);
    const api = readFacts(this.core.vmDir(vm.id));
    // Recorded before the VM goes: a crash in between leaves both, and find() prefers the VM.
    this.paused.put({ facts, metadata: api.metadata, snapshotTag: tag, cpus: vm.cpus, memoryMiB: vm.memoryMiB, startedAt: vm.createdAt, pausedAt: new Date().toISOString(), parentId: api.parentId });
    await this.core.remove(vm.id);
  }

  /**
   * Connect: a running sandbox gets at least `timeoutSec` more; a paused one is restored from
   * its snapshot with the same sandboxId (and its processes, files and memory). `resumed` tells
   * the route which status to answer (E2B: 200 running, 201 resumed).
   */
  connect(sandboxId: string, timeoutSec: number, options: { mustBePaused?: boolean } = {}): Promise<{ sandbox: S.Sandbox; resumed: boolean }> {
    return this.lock.run(sandboxId, async () => {
      const found = this.mustFind(sandboxId);
      if (found.state === 'running') {
        if (options.mustBePaused) throw conflict(`sandbox ${sandboxId} is already running`);
        const dir = this.core.vmDir(found.vm.id);
        const api = readFacts(dir);
        const wanted = Date.now() + timeoutSec * 1000;
        if (api.expiresAt === null || Date.parse(api.expiresAt) < wanted) writeFacts(dir, { ...api, expiresAt: new Date(wanted).toISOString() });
        return { sandbox: this.reply(found.facts), resumed: false };
      }
      const { paused } = found;
      // A VM by that name that is not this running sandbox (one that died): out of the way.
      const stale = this.core.find(sandboxId);
      if (stale && stale.name === sandboxId) await this.core.remove(stale.id);
      const vm = await this.clone(paused.snapshotTag, sandboxId);
      this.adopt(vm, paused.facts, { metadata: paused.metadata, timeoutSec, parentId: paused.parentId });
      this.forgetPaused(paused);
      return { sandbox: this.reply(paused.facts), resumed: true };
    });
  }

  /** The reaper's call for an expired VM: true if this API handled it (paused an autoPause sandbox). */
  expired(vm: VmView): Promise<boolean> | false {
    if (vm.name === undefined) return false;
    const facts = readE2bFacts(this.core.vmDir(vm.id));
    if (!facts || !facts.autoPause || facts.sandboxId !== vm.name) return false;
    return this.lock.run(vm.name, async () => {
      const found = this.find(vm.name);
      if (found?.state !== 'running') return true;
      // Still expired? A setTimeout or connect may have come first.
      const { expiresAt } = readFacts(this.core.vmDir(found.vm.id));
      if (expiresAt === null || Date.parse(expiresAt) > Date.now()) return true;
      await this.pauseRunning(found.vm, found.facts);
      return true;
    });
  }

  // ---- fork, snapshots --------------------------------------------------------------------

  /** `count` children of a running sandbox, each its own sandbox (new id and tokens), one entry each. */
  async fork(sandboxId: string, count: number, timeoutSec: number): Promise<Array<{ sandbox: S.Sandbox } | { error: S.E2bError }>> {
    const found = this.mustFind(sandboxId);
    if (found.state !== 'running') throw conflict(`sandbox ${sandboxId} is paused: connect to it first`);
    const { vm, facts } = found;
    const metadata = readFacts(this.core.vmDir(vm.id)).metadata;
    const ids = Array.from({ length: count }, () => newSandboxId());
    const children = await this.lock.run(sandboxId, () => this.core.fork(vm.id, ids));
    return children.map((child) => {
      if (child instanceof Error) {
        const e = e2bErrorOf(child);
        return { error: { code: e.status, message: e.message } };
      }
      const childFacts: E2bFacts = {
        ...facts,
        sandboxId: child.name,
        envdAccessToken: newAccessToken(),
        trafficAccessToken: facts.secure ? newAccessToken() : null,
      };
      this.adopt(child, childFacts, { metadata, timeoutSec, parentId: sandboxId });
      return { sandbox: this.reply(childFacts) };
    });
  }

  /** A snapshot of a running sandbox, usable as a templateID; named `name` or after the sandbox. */
  async snapshot(sandboxId: string, name: string | undefined): Promise<S.SnapshotInfo> {
    const tag = name ?? `snap-${sandboxId.slice(0, 40)}-${crypto.randomBytes(4).toString('hex')}`;
    if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/.test(tag)) throw badRequest(`snapshot name "${tag}" must be letters, digits, _ . - (at most 63), starting with a letter or digit`);
    if (isReservedTag(tag)) throw badRequest(`snapshot names starting with e2b- are shoal's own`);
    if (this.templates.aliases.has(tag)) throw conflict(`"${tag}" is a template alias`);
    return this.lock.run(sandboxId, async () => {
      const found = this.mustFind(sandboxId);
      if (found.state !== 'running') throw conflict(`sandbox ${sandboxId} is paused: connect to it first`);
      if (this.core.snapshots().some((s) => s.tag === tag)) throw conflict(`snapshot ${tag} already exists`);
      await this.core.snapshot(found.vm.id, tag);
      return { snapshotID: tag, names: [tag] };
    });
  }

  /** User snapshots (not templates' or paused sandboxes'), optionally only those of one sandbox. */
  snapshots(sandboxId: string | undefined): S.SnapshotInfo[] {
    const vmId = sandboxId === undefined ? undefined : this.core.find(sandboxId)?.id;
    if (sandboxId !== undefined && vmId === undefined) return [];
    return this.core.snapshots()
      .filter((s) => !isReservedTag(s.tag) && (vmId === undefined || s.parent === vmId))
      .map((s) => ({ snapshotID: s.tag, names: [s.tag] }));
  }

  /** DELETE /templates/{id} for a snapshot; template aliases and shoal's own tags are not deletable. */
  deleteSnapshot(tag: string): void {
    if (this.templates.aliases.has(tag)) throw badRequest(`"${tag}" is a template of the server's --template flags, not a snapshot`);
    if (isReservedTag(tag) || !this.core.snapshots().some((s) => s.tag === tag)) throw notFound(`snapshot ${tag} not found`);
    this.core.removeSnapshot(tag, { force: true });
  }
}

/** Running, or on its way there (a clone being restored): what E2B calls running. */
function isLive(vm: VmView): boolean {
  return vm.status === 'running' || vm.status === 'starting' || vm.status === 'creating';
}

/** E2B-like ids: a letter then lowercase letters and digits (also a valid VM name and DNS label). */
export function newSandboxId(): string {
  return `i${crypto.randomBytes(10).toString('hex')}`;
}

function expiry(timeoutSec: number): string {
  return new Date(Date.now() + timeoutSec * 1000).toISOString();
}
