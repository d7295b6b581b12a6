/**
 * `shoal run`: create a VM record, start its supervisor, and either wait for the container to
 * be running (--detach) or stay attached to it and exit with its exit code.
 */
import { Option, type Command } from 'commander';
import fs from 'node:fs';
import { act } from '../act';
import { collect } from '../options';
import path from 'node:path';
import { loadAssets } from '../../assets/setup';
import { parseImage } from '../../container/image-ref';
import { parseMaps } from '../../container/map-spec';
import { parseHealthCheck } from '../../supervisor/health-check';
import { parseEnv } from '../../container/podman-argv';
import { parseContainerOptions, type ContainerFlags } from '../../container/container-options';
import { MAX_ENV_FILE_BYTES, readEnvFiles } from '../../container/env-file';
import { STDERR, STDIN, STDOUT, type Channel } from '../../protocol/mux';
import { attachmentFor, checkNetworkSupport, parseNetwork } from '../../network/mode';
import { loopbackProxyProblem } from '../../network/proxy-env';
import { assertPortsFree, parsePublish } from '../../network/publish';
import { StateStore } from '../../state/store';
import { nameProblem, type VmConfig, type VmRecord } from '../../state/vm-record';
import { ShoalError } from '../../util/errors';
import { selectBackend, type JailerChoice, type VmmChoice } from '../../vmm/select';
import { onControlEvents, sendClientMessage, SupervisorClient } from '../../control/client';
import { exitCodeOf } from '../../protocol/messages';
import { startSupervisor } from '../../lifecycle/spawn';
import { parseCpus, parseMemory, parseVmm } from '../options';
import { progressLine } from '../output';
import { releaseStdin, startTerminal, terminalSizeNow } from '../terminal';

export interface RunFlags extends ContainerFlags {
  name?: string;
  envFile: string[];
  volume: string[];
  cpus: string;
  memory: string;
  env: string[];
  /** Internal (shoal serve): the env as a JSON object on stdin, so no value is in an argv. */
  envStdin?: boolean;
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
  // Parsed again for what the record does not keep: an explicit allow_host_loopback=false.
  const network = parseNetwork(flags.network ?? 'rootless');
  const assets = loadAssets();
  const vmm: VmmChoice = parseVmm(flags.vmm);
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
  progressLine(`using ${selection.reason}`);
  const client = await SupervisorClient.connect(store, record);
  return config.detach ? waitUntilRunning(client, config.name) : attach(client, config);
}

function validate(image: string, command: string[], flags: RunFlags): VmConfig {
  if (!flags.jailer && (flags.jailerUid ?? flags.jailerGid ?? flags.jailerChroot) !== undefined) {
    throw new ShoalError('--jailer-uid, --jailer-gid and --jailer-chroot go with --jailer');
  }
  const name = flags.name ?? `vm-${Math.random().toString(16).slice(2, 8)}`;
  const problem = nameProblem(name);
  if (problem) throw new ShoalError(`invalid --name: ${problem}`);
  const source = parseImage(image); // fails early on a missing archive or a malformed reference
  // podman's order: the env files first, then each --env over them.
  const fileEnv = readEnvFiles(flags.envFile ?? []);
  let env: Record<string, string>;
  try {
    env = { ...fileEnv, ...(flags.envStdin === true ? envFromStdin(flags) : {}), ...parseEnv(flags.env) };
  } catch (err) {
    if (err instanceof ShoalError) throw err;
    throw new ShoalError(`invalid --env: ${(err as Error).message}`);
  }
  const container = parseContainerOptions(flags);
  const network = parseNetwork(flags.network ?? 'rootless');
  return {
    name,
    image,
    source,
    command: command[0] === '--' ? command.slice(1) : command,
    env,
    cpus: parseCpus(flags.cpus),
    memoryMiB: parseMemory(flags.memory),
    interactive: flags.interactive === true,
    ...(flags.tty === true ? { tty: terminalSizeNow() } : {}),
    detach: flags.detach === true,
    autoRemove: flags.rm === true,
    network: network.mode,
    ...(network.allowHostLoopback === true ? { allowHostLoopback: true } : {}),
    ...(network.netnsPath !== undefined ? { netnsPath: network.netnsPath } : {}),
    publish: parsePublish(flags.publish),
    // -v/--volume is podman's spelling of --map (a host directory, served over FUSE).
    maps: parseMaps([...(flags.map ?? []), ...(flags.volume ?? [])]),
    ...(Object.keys(container).length > 0 ? { container } : {}),
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

/** -d: returns once the container really runs (or already ended: it did run) and prints the name. */
async function waitUntilRunning(client: SupervisorClient, name: string): Promise<number> {
  try {
    const result = await client.waitUntilRunning(progressLine);
    if (result.outcome === 'error') throw new ShoalError(result.message);
    if (result.outcome === 'lost') throw new ShoalError('the supervisor went away before the VM was running');
    process.stdout.write(`${name}\n`);
    return 0;
  } finally {
    client.close();
  }
}

/**
 * Streams the container's stdio until it exits; forwards SIGINT/SIGTERM to it, as podman's
 * sig-proxy does. With -t the host terminal goes raw at once (a program's first terminal queries
 * must not be echoed here), a Ctrl-C typed before the container runs still aborts the start,
 * and the window size follows along.
 */
function attach(client: SupervisorClient, config: VmConfig): Promise<number> {
  const { interactive } = config;
  return new Promise<number>((resolve, reject) => {
    const channel: Channel = client.attach(true);
    let running = false;
    const terminal = config.tty ? startTerminal(interactive) : undefined;
    if (terminal) {
      sendClientMessage(channel, { type: 'resize', ...terminal.size });
      terminal.onResize((size) => sendClientMessage(channel, { type: 'resize', ...size }));
    }
    let exitCode: number | undefined;
    let error: string | undefined;
    const forward = (signal: NodeJS.Signals): void => sendClientMessage(channel, { type: 'signal', signal });
    const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'];
    for (const signal of signals) process.on(signal, forward);
    channel.setDataHandler((stream, data) => {
      const target = stream === STDERR ? process.stderr : stream === STDOUT ? process.stdout : undefined;
      if (target && !target.write(data)) return new Promise<void>((r) => target.once('drain', r));
      return;
    });
    onControlEvents(channel, (event) => {
      if (event.type === 'progress') progressLine(event.message);
      else if (event.type === 'running') running = true;
      else if (event.type === 'exit') exitCode = exitCodeOf(event);
      else if (event.type === 'error') error = event.message;
    });
    channel.on('close', () => {
      for (const signal of signals) process.off(signal, forward);
      terminal?.restore();
      releaseStdin();
      client.close();
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

/**
 * `--env-stdin`: the environment as one JSON object (names to strings) on stdin, at most 1 MiB.
 * How `shoal serve` hands a sandbox's env to the `run` it starts: argv is readable by every
 * local user (/proc/PID/cmdline), a pipe only by the two processes.
 */
function envFromStdin(flags: RunFlags): Record<string, string> {
  if (flags.interactive === true) throw new ShoalError('invalid --env-stdin: stdin is the container\'s with -i');
  let text: string;
  try {
    text = fs.readFileSync(0, 'utf8');
  } catch (err) {
    throw new ShoalError(`invalid --env-stdin: cannot read stdin (${(err as Error).message})`);
  }
  if (Buffer.byteLength(text) > MAX_ENV_FILE_BYTES) throw new ShoalError(`invalid --env-stdin: larger than ${MAX_ENV_FILE_BYTES} bytes`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ShoalError('invalid --env-stdin: not a JSON object');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ShoalError('invalid --env-stdin: not a JSON object');
  const env: Record<string, string> = {};
  for (const [key, v] of Object.entries(value)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new ShoalError(`invalid --env-stdin: "${key.slice(0, 64)}" is not a variable name`);
    if (typeof v !== 'string') throw new ShoalError(`invalid --env-stdin: the value of ${key} is not a string`);
    env[key] = v;
  }
  return env;
}

/** The command's flags, declared beside its handler. */
export function registerRun(program: Command): void {
  program
    .command('run')
    .description('run a container in a new microVM')
    .argument('<image>', 'registry reference, docker-archive:PATH or oci-archive:PATH')
    .argument('[command...]', 'command and arguments for the container')
    .option('--name <name>', 'name of the VM')
    .option('--cpus <n>', 'vCPUs', '1')
    .option('--memory <MiB>', 'guest memory in MiB', '1024')
    .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect, [])
    .option('-d, --detach', 'run in the background and print the name')
    .option('--rm', 'remove the VM when the container exits')
    .option('-i, --interactive', 'pass stdin to the container')
    .option('-t, --tty', 'give the container a terminal (with -i: an interactive session)')
    .option('--vmm <vmm>', 'auto, qemu or firecracker (default: $SHOAL_VMM, else auto)', process.env.SHOAL_VMM ?? 'auto')
    .option('--no-snapshot', 'do not use the image cache (neither restore from it nor save to it)')
    .option('--network <mode>', 'rootless (default: user-mode networking; QEMU\'s slirp, or slirp4netns on Firecracker), slirp4netns, bridged (root), ns:PATH (root: join that network namespace, e.g. a CNI pod\'s, and take its interface\'s address) or none; slirp4netns:allow_host_loopback=true (also rootless:...) lets the guest reach the host\'s loopback as 10.0.2.2, which slirp4netns withholds by default')
    .option('-p, --publish <[ADDR:]HOST:GUEST[/tcp|/udp]>', 'publish a guest port on the host (repeatable, comma-separated)', collect, [])
    .option('--health-check <url>', 'once this URL answers in the guest, snapshot the running app; later runs start from it')
    .option('--jailer', 'run Firecracker under its jailer (chroot, unprivileged uid/gid, cgroup)')
    .option('--jailer-uid <uid>', 'with --jailer: the uid Firecracker drops to (default 65534)')
    .option('--jailer-gid <gid>', 'with --jailer: the gid Firecracker drops to (default 65534)')
    .option('--jailer-chroot <dir>', 'with --jailer: the chroot base directory (default /srv/jailer)')
    .option('--map <HOST:GUEST[:ro]>', 'show a host directory to the container at GUEST, over FUSE (repeatable, comma-separated)', collect, [])
    .option('-v, --volume <HOST:GUEST[:ro]>', 'podman\'s spelling of --map (repeatable)', collect, [])
    .option('--env-file <file>', 'read KEY=VALUE lines from a file, podman\'s format (repeatable)', collect, [])
    .addOption(new Option('--env-stdin', 'read the environment as a JSON object from stdin (used by shoal serve)').hideHelp())
    .option('-u, --user <user[:group]>', 'run the container\'s process as this user (name or uid)')
    .option('-w, --workdir <dir>', 'the working directory in the container (absolute)')
    .option('--entrypoint <cmd|json>', 'override the image\'s entrypoint (a JSON array for arguments)')
    .option('--hostname <name>', 'the container\'s and the guest\'s hostname (default: the VM name)')
    .option('-l, --label <KEY[=VALUE]>', 'set a label on the container (repeatable)', collect, [])
    .option('--read-only', 'mount the container\'s root filesystem read-only')
    .option('--init', 'run an init inside the container that forwards signals and reaps processes')
    .option('--cap-add <cap>', 'add a capability (repeatable)', collect, [])
    .option('--cap-drop <cap>', 'drop a capability (repeatable)', collect, [])
    .option('--privileged', 'all capabilities and the guest\'s devices in the container (the VM stays the boundary)')
    .option('--stop-timeout <seconds>', 'seconds from SIGTERM to SIGKILL when the container is stopped')
    .passThroughOptions()
    .action(act((image: string, command: string[], flags: Parameters<typeof runCommand>[2]) => runCommand(image, command, flags)));
}
