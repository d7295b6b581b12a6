/**
 * Creating a VM: what `shoal run` does once its flags are parsed, for every front end. The spec
 * is validated into the VM's config (every rule of `run` in one place), the name claimed, the
 * record written and the VM's supervisor spawned (src/lifecycle/spawn); `createVm` then waits
 * until the container runs, forwarding the supervisor's progress, and cleans up a VM that never
 * got there. The environment travels in the record (a 0600 file in the VM's directory), which
 * the supervisor reads: no value is ever in an argv, where every local user could read it.
 */
import path from 'node:path';
import { loadAssets } from '../assets/setup';
import { parseContainerOptions, parseHealthCheck } from '../container/container-options';
import { parseImage } from '../container/image-ref';
import { parseMaps } from '../container/map-spec';
import { SupervisorClient } from '../control/client';
import { startSupervisor } from '../lifecycle/spawn';
import { attachmentFor, checkNetworkSupport, parseNetwork } from '../network/mode';
import { loopbackProxyProblem } from '../network/proxy-env';
import { assertPortsFree, parsePublish } from '../network/publish';
import { startClone, waitUntilRunning as waitForClone } from '../snapshot/clone';
import { findSnapshot } from '../snapshot/store';
import type { StateStore } from '../state/store';
import { nameProblem, type VmConfig, type VmRecord } from '../state/vm-record';
import { ShoalError } from '../util/errors';
import { selectBackend, type VmmChoice } from '../vmm/select';
import { checkCpus, checkMemory } from './limits';
import { InvalidSpecError, validating } from './errors';
import { discardVm } from './remove';
import type { CreateSpec, OnProgress } from './types';

/** Longest env the core takes (names and values), as the control socket's exec limit. */
const MAX_ENV_BYTES = 1 << 20;

/** A VM whose supervisor runs and answers on its control socket; the caller owns the client. */
export interface StartedVm {
  record: VmRecord;
  config: VmConfig;
  client: SupervisorClient;
}

export interface CreateOptions {
  onProgress?: OnProgress;
  /**
   * Keep a VM that failed to start (its record says why, for `shoal ls`), as `shoal run -d`
   * always has. Default: it is killed and removed, so the name is free again.
   */
  keepOnFailure?: boolean;
}

/** The spec as a VM config: every rule of `run`, each failure a one-line ShoalError. */
export function configOf(spec: CreateSpec): VmConfig {
  if (spec.image === undefined) throw new ShoalError('give an image to create a VM from');
  const name = spec.name ?? `vm-${Math.random().toString(16).slice(2, 8)}`;
  const problem = nameProblem(name);
  if (problem) throw new ShoalError(`invalid --name: ${problem}`);
  const source = parseImage(spec.image); // fails early on a missing archive or a malformed reference
  const env = checkEnv(spec.env ?? {});
  const command = spec.cmd ?? [];
  if (!command.every((a) => typeof a === 'string' && !a.includes('\0'))) throw new ShoalError('invalid command: every argument must be a string without NUL');
  if (spec.container !== undefined && spec.containerOptions !== undefined) throw new ShoalError('give container flags or parsed container options, not both');
  const container = spec.containerOptions ?? parseContainerOptions(spec.container ?? {});
  const network = parseNetwork(spec.network ?? 'rootless');
  if (spec.jailer !== undefined && spec.jailer.chrootBaseDir !== undefined && !path.isAbsolute(spec.jailer.chrootBaseDir)) {
    throw new ShoalError(`invalid --jailer-chroot "${spec.jailer.chrootBaseDir}": expected an absolute path`);
  }
  return {
    name,
    image: spec.image,
    source,
    command,
    env,
    cpus: checkCpus(spec.cpus ?? 1),
    memoryMiB: checkMemory(spec.memoryMiB ?? 1024),
    interactive: spec.interactive === true,
    ...(spec.tty !== undefined ? { tty: spec.tty } : {}),
    detach: spec.attached !== true,
    autoRemove: spec.autoRemove === true,
    network: network.mode,
    ...(network.allowHostLoopback === true ? { allowHostLoopback: true } : {}),
    ...(network.netnsPath !== undefined ? { netnsPath: network.netnsPath } : {}),
    publish: parsePublish(spec.publish ?? []),
    maps: parseMaps(spec.maps ?? []),
    ...(Object.keys(container).length > 0 ? { container } : {}),
    ...(spec.healthCheck !== undefined ? { healthCheck: parseHealthCheck(spec.healthCheck) } : {}),
    ...(spec.jailer !== undefined ? { jailer: spec.jailer } : {}),
    imageCache: spec.imageCache !== false,
  };
}

function checkEnv(env: Record<string, string>): Record<string, string> {
  if (typeof env !== 'object' || env === null || Array.isArray(env)) throw new ShoalError('invalid env: expected names to strings');
  let size = 0;
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new ShoalError(`invalid --env: invalid environment variable name "${key.slice(0, 64)}"`);
    if (typeof value !== 'string' || value.includes('\0')) throw new ShoalError(`invalid --env: the value of ${key} is not a string without NUL`);
    size += key.length + Buffer.byteLength(value) + 2;
    if (size > MAX_ENV_BYTES) throw new ShoalError(`invalid --env: larger than ${MAX_ENV_BYTES} bytes`);
    out[key] = value;
  }
  return out;
}

/**
 * Validates the spec, claims the name, writes the record and spawns the supervisor; returns
 * once the supervisor's control socket answers. `shoal run` (attached) follows the VM from here.
 * A supervisor that dies first leaves its failed record (keepOnFailure, as `shoal run` always
 * has), or nothing.
 */
export async function startVm(store: StateStore, spec: CreateSpec, onProgress?: OnProgress, keepOnFailure = true): Promise<StartedVm> {
  const config = validating(() => configOf(spec));
  // Parsed again for what the config does not keep: an explicit allow_host_loopback=false.
  const network = parseNetwork(spec.network ?? 'rootless');
  const assets = loadAssets();
  const vmm = parseVmm(spec.vmm ?? 'auto');
  const selection = await selectBackend(vmm, assets.accel, assets.accelReason, config.jailer);
  checkNetworkSupport(config.network, selection.backend, config.publish, { jailer: config.jailer !== undefined, ...(network.allowHostLoopback !== undefined ? { allowHostLoopback: network.allowHostLoopback } : {}) });
  if (attachmentFor(config.network, selection.backend) === 'namespace' && !config.allowHostLoopback) {
    // The guest's podman would be handed a proxy it cannot reach; say so instead of a failed pull.
    const problem = loopbackProxyProblem(process.env, config.network);
    if (problem) throw new ShoalError(problem);
  }
  await assertPortsFree(config.publish);

  const id = store.newId();
  store.claimName(config.name, id);
  const record: VmRecord = {
    id,
    config,
    backend: selection.backend,
    accel: selection.accel,
    state: 'creating',
    createdAt: new Date().toISOString(),
  };
  try {
    store.write(record);
    startSupervisor(store, id);
  } catch (err) {
    store.remove(record);
    throw err;
  }
  onProgress?.({ stage: 'create', message: `using ${selection.reason}` });
  try {
    return { record, config, client: await SupervisorClient.connect(store, record) };
  } catch (err) {
    // The supervisor died before it answered (its record says why, for `shoal ls`).
    if (!keepOnFailure) await discardVm(store, id);
    throw err;
  }
}

/**
 * Creates a VM (from an image, or as a clone of a snapshot) and resolves once its container
 * runs (or already ended: it did run), with the VM's record as it is then.
 */
export async function createVm(store: StateStore, spec: CreateSpec, options: CreateOptions = {}): Promise<VmRecord> {
  if ((spec.image === undefined) === (spec.snapshot === undefined)) throw new InvalidSpecError('give exactly one of image and snapshot');
  if (spec.snapshot !== undefined) return cloneVm(store, spec, options);
  if (spec.attached === true) throw new InvalidSpecError('createVm is for detached VMs (startVm, then attach)');
  const { record, client } = await startVm(store, spec, options.onProgress, options.keepOnFailure === true);
  try {
    const result = await client.waitUntilRunning((message) => options.onProgress?.({ stage: 'create', message }));
    if (result.outcome === 'error') throw new ShoalError(result.message);
    if (result.outcome === 'lost') throw new ShoalError('the supervisor went away before the VM was running');
  } catch (err) {
    if (!options.keepOnFailure) await discardVm(store, record.id);
    throw err;
  } finally {
    client.close();
  }
  return store.read(record.id) ?? record;
}

/** A clone of a snapshot: the snapshot's VM with its own name, ports and disk. */
async function cloneVm(store: StateStore, spec: CreateSpec, options: CreateOptions): Promise<VmRecord> {
  for (const field of ['cpus', 'memoryMiB', 'env', 'cmd', 'container', 'maps', 'healthCheck', 'interactive', 'tty', 'attached', 'vmm', 'jailer'] as const) {
    if (spec[field] !== undefined) throw new InvalidSpecError(`${field} cannot be given with a snapshot (a clone is its snapshot's VM)`);
  }
  // A clone keeps its snapshot's network mode; only a namespace of its own may be named (a
  // snapshot of a VM in a pod's namespace, cloned into another pod's: startClone checks the pair).
  const network = spec.network !== undefined ? parseNetwork(spec.network) : undefined;
  if (network !== undefined && network.netnsPath === undefined) throw new InvalidSpecError(`network cannot be given with a snapshot, except ns:PATH (a clone keeps its snapshot's network)`);
  const { dir, manifest } = findSnapshot(store, spec.snapshot!);
  const publish = validating(() => parsePublish(spec.publish ?? []));
  await assertPortsFree(publish);
  const name = spec.name ?? `${manifest.config.name}-${Math.random().toString(16).slice(2, 6)}`;
  const record = startClone(store, dir, manifest, { name, autoRemove: spec.autoRemove === true, publish, ...(network?.netnsPath !== undefined ? { netnsPath: network.netnsPath } : {}) });
  options.onProgress?.({ stage: 'clone', message: `restoring ${name} from ${manifest.tag}` });
  try {
    await waitForClone(store, record, (message) => options.onProgress?.({ stage: 'clone', message }));
  } catch (err) {
    if (!options.keepOnFailure) await discardVm(store, record.id);
    throw err;
  }
  return store.read(record.id) ?? record;
}


function parseVmm(value: string): VmmChoice {
  if (value === 'auto' || value === 'qemu' || value === 'firecracker') return value;
  throw new ShoalError(`invalid --vmm "${value}": expected auto, qemu or firecracker`);
}
