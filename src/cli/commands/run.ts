/**
 * `shoal run`: create a VM record, start its supervisor, and either wait for the container to
 * be running (--detach) or stay attached to it and exit with its exit code.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { loadAssets } from '../../assets/setup';
import { parseImage } from '../../container/image-ref';
import { parseMaps } from '../../container/map-spec';
import { parseHealthCheck } from '../../supervisor/health-check';
import { parseEnv } from '../../container/podman-argv';
import { STDERR, STDIN, STDOUT, type Channel, type Mux } from '../../protocol/mux';
import { checkNetworkSupport, parseNetworkMode } from '../../network/mode';
import { assertPortsFree, parsePublish } from '../../network/publish';
import { StateStore } from '../../state/store';
import { nameProblem, type VmConfig, type VmRecord } from '../../state/vm-record';
import { vmFiles } from '../../supervisor/vm-files';
import { ShoalError } from '../../util/errors';
import { selectBackend, type JailerChoice, type VmmChoice } from '../../vmm/select';
import { connectSupervisor } from '../control-client';
import { parseCpus, parseMemory, parseVmm } from '../options';
import { progressLine } from '../output';
import { releaseStdin, startTerminal, terminalSizeNow } from '../terminal';

export interface RunFlags {
  name?: string;
  cpus: string;
  memory: string;
  env: string[];
  detach?: boolean;
  rm?: boolean;
  interactive?: boolean;
  tty?: boolean;
  vmm: string;
  network?: string;
  snapshot?: boolean;
  publish: string[];
  map: string[];
  healthCheck?: string;
  jailer?: boolean;
  jailerUid?: string;
  jailerGid?: string;
  jailerChroot?: string;
}

export async function runCommand(image: string, command: string[], flags: RunFlags): Promise<number> {
  const store = new StateStore();
  const config = validate(image, command, flags);
  const assets = loadAssets();
  const vmm: VmmChoice = parseVmm(flags.vmm);
  const selection = await selectBackend(vmm, assets.accel, assets.accelReason, config.jailer);
  checkNetworkSupport(config.network, selection.backend, config.publish, { jailer: config.jailer !== undefined });
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
  progressLine(`using ${selection.reason}`);
  const mux = await connectSupervisor(store, record);
  return config.detach ? waitUntilRunning(mux, config.name) : attach(mux, config);
}

function validate(image: string, command: string[], flags: RunFlags): VmConfig {
  if (!flags.jailer && (flags.jailerUid ?? flags.jailerGid ?? flags.jailerChroot) !== undefined) {
    throw new ShoalError('--jailer-uid, --jailer-gid and --jailer-chroot go with --jailer');
  }
  const name = flags.name ?? `vm-${Math.random().toString(16).slice(2, 8)}`;
  const problem = nameProblem(name);
  if (problem) throw new ShoalError(`invalid --name: ${problem}`);
  parseImage(image); // fails early on a missing archive or a malformed reference
  let env: Record<string, string>;
  try {
    env = parseEnv(flags.env);
  } catch (err) {
    throw new ShoalError(`invalid --env: ${(err as Error).message}`);
  }
  return {
    name,
    image,
    command: command[0] === '--' ? command.slice(1) : command,
    env,
    cpus: parseCpus(flags.cpus),
    memoryMiB: parseMemory(flags.memory),
    interactive: flags.interactive === true,
    ...(flags.tty === true ? { tty: terminalSizeNow() } : {}),
    detach: flags.detach === true,
    autoRemove: flags.rm === true,
    network: parseNetworkMode(flags.network ?? 'rootless'),
    publish: parsePublish(flags.publish),
    maps: parseMaps(flags.map ?? []),
    ...(flags.healthCheck !== undefined ? { healthCheck: parseHealthCheck(flags.healthCheck) } : {}),
    ...(flags.jailer ? { jailer: parseJailer(flags) } : {}),
    imageCache: flags.snapshot !== false,
  };
}

/** `--jailer [--jailer-uid U] [--jailer-gid G] [--jailer-chroot DIR]`; unprivileged nobody:nogroup by default. */
function parseJailer(flags: RunFlags): JailerChoice {
  const id = (value: string | undefined, what: string): number => {
    if (value === undefined) return 65534;
    if (!/^\d+$/.test(value) || Number(value) > 0xfffffffe) throw new ShoalError(`invalid --jailer-${what} "${value}": expected a numeric id`);
    return Number(value);
  };
  const choice: JailerChoice = { uid: id(flags.jailerUid, 'uid'), gid: id(flags.jailerGid, 'gid') };
  if (flags.jailerChroot !== undefined) {
    if (!path.isAbsolute(flags.jailerChroot)) throw new ShoalError(`invalid --jailer-chroot "${flags.jailerChroot}": expected an absolute path`);
    choice.chrootBaseDir = flags.jailerChroot;
  }
  return choice;
}

/** The supervisor runs detached, in its own session, so the VM outlives this CLI process. */
function startSupervisor(store: StateStore, id: string): void {
  const files = vmFiles(store.vmDir(id));
  const log = fs.openSync(files.supervisorLog, 'a');
  const child = spawn(process.execPath, [path.join(__dirname, '..', '..', 'supervisor', 'main.js'), id], {
    detached: true,
    stdio: ['ignore', log, log],
    env: { ...process.env, SHOAL_STATE_DIR: store.root },
  });
  fs.closeSync(log);
  child.unref();
}

function waitUntilRunning(mux: Mux, name: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const channel = mux.open({ kind: 'attach', stdio: false });
    channel.setDataHandler(() => undefined);
    let done = false;
    channel.on('message', (message: Record<string, unknown>) => {
      if (message.type === 'progress') progressLine(String(message.message));
      else if (message.type === 'running' && !done) {
        done = true;
        process.stdout.write(`${name}\n`);
        mux.destroy();
        resolve(0);
      } else if (message.type === 'error' && !done) {
        done = true;
        reject(new ShoalError(String(message.message)));
      } else if (message.type === 'exit' && !done) {
        // The container ended before we looked: it did run.
        done = true;
        process.stdout.write(`${name}\n`);
        resolve(0);
      }
    });
    channel.on('close', () => {
      if (!done) reject(new ShoalError('the supervisor went away before the VM was running'));
    });
  });
}

/**
 * Streams the container's stdio until it exits; forwards SIGINT/SIGTERM to it, as podman's
 * sig-proxy does. With -t the host terminal goes raw at once (a program's first terminal queries
 * must not be echoed here), a Ctrl-C typed before the container runs still aborts the start,
 * and the window size follows along.
 */
function attach(mux: Mux, config: VmConfig): Promise<number> {
  const { interactive } = config;
  return new Promise<number>((resolve, reject) => {
    const channel: Channel = mux.open({ kind: 'attach', stdio: true });
    let running = false;
    const terminal = config.tty ? startTerminal(interactive) : undefined;
    if (terminal) {
      channel.send({ type: 'resize', ...terminal.size });
      terminal.onResize((size) => channel.send({ type: 'resize', ...size }));
    }
    let exitCode: number | undefined;
    let error: string | undefined;
    const forward = (signal: NodeJS.Signals): void => channel.send({ type: 'signal', signal });
    const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
    for (const signal of signals) process.on(signal, forward);
    channel.setDataHandler((stream, data) => {
      const target = stream === STDERR ? process.stderr : stream === STDOUT ? process.stdout : undefined;
      if (target && !target.write(data)) return new Promise<void>((r) => target.once('drain', r));
      return;
    });
    channel.on('message', (message: Record<string, unknown>) => {
      if (message.type === 'progress') progressLine(String(message.message));
      else if (message.type === 'running') running = true;
      else if (message.type === 'exit') exitCode = typeof message.code === 'number' ? message.code : 255;
      else if (message.type === 'error') error = String(message.message);
    });
    channel.on('close', () => {
      for (const signal of signals) process.off(signal, forward);
      terminal?.restore();
      releaseStdin();
      mux.destroy();
      if (exitCode !== undefined) resolve(exitCode);
      else reject(new ShoalError(error ?? 'lost the connection to the VM supervisor'));
    });
    if (interactive) {
      void (async () => {
        for await (const chunk of process.stdin) {
          if (channel.closed) break;
          // Raw mode turned Ctrl-C into a byte: before the container runs, it means "abort".
          if (terminal?.raw && !running && (chunk as Buffer).includes(0x03)) forward('SIGINT');
          await channel.write(STDIN, chunk as Buffer);
        }
        channel.end(STDIN);
      })().catch(() => channel.end(STDIN));
    }
  });
}

