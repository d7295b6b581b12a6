/**
 * Taking a snapshot of the running VM (for `snapshot create`/`fork`, and the image cache): the
 * refusals, and the sequence quiesce, pause, state + memory + disk, resume, resume the link.
 * It owns only the chain that serializes its snapshots; the VM's live parts come from the
 * supervisor through SnapshotSubject, each time, since they change (boot, restore, finish).
 */
import crypto from 'node:crypto';
import { refuse, sendEvent } from '../control/server';
import { request } from '../host/exec-client';
import { encodeSync, FrameType } from '../protocol/frames';
import type { GatedStream } from '../protocol/gate';
import type { Channel, Mux } from '../protocol/mux';
import { snapshotFiles, snapshotTempDirProblem } from '../snapshot/store';
import type { StateStore } from '../state/store';
import { ShoalError } from '../util/errors';
import { sleep } from '../util/process';
import type { VmHandle, VmSpec } from '../vmm/backend';
import type { VmRecordHandle } from './vm-record-handle';
import { copySparse } from '../util/copy';

/** How long the guest has to answer the quiesce request and the re-HELLO around a snapshot. */
const QUIESCE_TIMEOUT_MS = 30_000;

export interface SnapshotSubject {
  /** The VM's VMM, agent session and write gate, once it has them (also while starting: the image cache). */
  parts(): { vm: VmHandle; agent: Mux; gate: GatedStream } | undefined;
  /** Running and taking requests: not starting, stopping or finished, its agent session up. */
  running(): boolean;
  /** The VM's boot spec (for a clone: its source's, with its own scratch disk). */
  spec(): VmSpec | undefined;
  /** A stop was asked for (the VM is going away). */
  stopping(): boolean;
  /** The agent link did not come back after a snapshot: the VM is lost. */
  linkLost(error: string): void;
  /**
   * After a snapshot that reset the agent stream (VmHandle.agentLinkResets moved, Firecracker):
   * replace the old session by a fresh one on a new connection (rejects when none comes).
   */
  reconnect(old: Mux): Promise<void>;
}

export type SnapshotTimings = { pausedMs: number; totalMs: number };

/**
 * Under TCG, a guest with more than one vCPU that is paused and migrated for a snapshot hangs in
 * soft lockups after it resumes (seen on this project's machines), so snapshots, and with them the
 * image cache, are limited to 1-vCPU guests there. KVM guests are not affected.
 */
export function snapshotSafe(accel: string, cpus: number): boolean {
  return accel === 'kvm' || cpus === 1;
}

export class Snapshotter {
  /** Settles when the snapshot in progress (if any) is done; the next one waits for it. */
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly store: StateStore,
    private readonly record: VmRecordHandle,
    private readonly scratchDisk: string,
    private readonly subject: SnapshotSubject,
  ) {}

  /**
   * A control request: writes state.bin, memory.raw and scratch.img of this VM into dir (the
   * CLI builds the snapshot directory around them) and answers with what the manifest needs.
   */
  async serve(channel: Channel, dir: string): Promise<void> {
    const say = (message: string): void => sendEvent(channel, { type: 'progress', message });
    const fail = (message: string): void => refuse(channel, message);
    const record = this.record.current;
    const name = record.config.name;
    if (this.subject.stopping()) {
      fail(`VM ${name} is stopping`);
      return;
    }
    if (!this.subject.parts() || !this.subject.running()) {
      fail(`VM ${name} is not running`);
      return;
    }
    if ((record.config.maps ?? []).length > 0) {
      fail(`VM ${name} has --map directories, whose FUSE state lives in its supervisor: it cannot be snapshotted`);
      return;
    }
    if (!snapshotSafe(record.accel, record.config.cpus)) {
      fail(`VM ${name} has ${record.config.cpus} vCPUs under TCG: pausing such a guest for a snapshot leaves it in soft lockups on resume here, so only 1-vCPU TCG VMs (or KVM VMs) can be snapshotted`);
      return;
    }
    const dirProblem = snapshotTempDirProblem(this.store, dir);
    if (dirProblem) {
      fail(dirProblem);
      return;
    }
    try {
      const timings = await this.take(dir, say);
      const current = this.record.current;
      sendEvent(channel, { type: 'result', vmSpec: this.subject.spec()!, config: current.config, loadedImage: current.loadedImage ?? null, parent: current.restoredFrom ?? null, timings });
      channel.close();
    } catch (err) {
      fail(`snapshot of ${name} failed: ${(err as Error).message}`);
    }
  }

  /**
   * Quiesce, pause, state + memory + disk into dir, resume, resume the link. The agent link is
   * quiesced first: the agent answers and then holds its writes, the host holds its own, so no
   * frame is half-sent at the snapshot point. Then pause, migrate device state (RAM stays in its
   * file), copy RAM and disk, resume, and re-HELLO with resume: true so the agent sends what it
   * held and the session goes on.
   */
  async take(dir: string, say: (message: string) => void): Promise<SnapshotTimings> {
    // One at a time: a user's snapshot that arrives during the startup snapshot (or the other way
    // round) waits for it, rather than pausing and migrating the VM twice at once.
    const previous = this.chain;
    let done: () => void = () => undefined;
    this.chain = new Promise<void>((resolve) => { done = resolve; });
    try {
      await previous;
      return await this.takeNow(dir, say);
    } finally {
      done();
    }
  }

  private async takeNow(dir: string, say: (message: string) => void): Promise<SnapshotTimings> {
    const parts = this.subject.parts();
    if (!parts || parts.agent.destroyed) throw new ShoalError(`VM ${this.record.current.config.name} is not running`);
    const { vm, agent, gate } = parts;
    const resetsBefore = vm.agentLinkResets ?? 0;
    const started = Date.now();
    let pausedMs = 0;
    say('quiescing the agent link');
    await withTimeout(request(agent, { kind: 'quiesce' }), QUIESCE_TIMEOUT_MS, 'the guest agent did not quiesce');
    gate.hold();
    try {
      // A booted VM is paused for its device state and disk; a restored one (its RAM a private
      // mapping of its snapshot's) is paused, on QEMU, for the pages it changed since its
      // restore (its parent's memory copied beforehand, device state migrated live), and on
      // Firecracker for a Diff merged onto a copy of its parent's memory made beforehand. Either
      // way the scratch disk is copied while the vCPUs are stopped, and the VM is resumed before
      // snapshotRunning returns or throws.
      const target = snapshotFiles(dir);
      const timings = await vm.snapshotRunning({ stateFile: target.state, memoryFile: target.memory }, {
        progress: say,
        whilePaused: async () => {
          say('copying the scratch disk');
          await copySparse(this.scratchDisk, target.scratch);
        },
      });
      pausedMs = timings.pausedMs;
    } finally {
      // Only a snapshot that cut the stream needs a new session: one that failed before (the
      // base copy, say) goes on on the old stream, and its execs with it.
      if ((vm.agentLinkResets ?? 0) !== resetsBefore) await this.subject.reconnect(agent);
      else await this.resumeLink(agent, gate);
    }
    return { pausedMs, totalMs: Date.now() - started };
  }

  /** After a snapshot: re-HELLO (resume: true) until the agent answers, then send what we held. */
  private async resumeLink(agent: Mux, gate: GatedStream): Promise<void> {
    const acked = new Promise<void>((resolve) => agent.once('helloAck', () => resolve()));
    const deadline = Date.now() + QUIESCE_TIMEOUT_MS;
    let done = false;
    void acked.then(() => { done = true; });
    while (!done) {
      if (Date.now() > deadline || agent.destroyed) {
        this.subject.linkLost('the guest agent did not answer after a snapshot');
        throw new ShoalError('the guest agent did not answer after the snapshot');
      }
      gate.bypass(encodeSync(FrameType.Hello, { session: 'resume', resume: true, timeMs: Date.now(), seed: crypto.randomBytes(32).toString('hex') }));
      await Promise.race([acked, sleep(500)]);
    }
    gate.release(true);
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => { timer = setTimeout(() => reject(new ShoalError(message)), ms); }),
  ]);
}
