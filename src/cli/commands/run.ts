/**
 * `shoal run`: the flags become the core's CreateSpec (src/core does the creating: validation,
 * record, supervisor, the wait); this file keeps the parsing, the attaching (stdio, signals,
 * the terminal) and the printing. With --detach it prints the name once the container runs;
 * else it stays attached and exits with the container's exit code.
 */
import type { Command } from 'commander';
import path from 'node:path';
import { act } from '../act';
import { collect } from '../options';
import { readEnvFiles } from '../../container/env-file';
import { parseEnv } from '../../container/podman-argv';
import type { ContainerFlags } from '../../container/container-options';
import { onControlEvents, sendClientMessage, type SupervisorClient } from '../../control/client';
import { createVm, startVm, type CreateSpec, type OnProgress } from '../../core';
import { exitCodeOf } from '../../protocol/messages';
import { STDERR, STDIN, STDOUT, type Channel } from '../../protocol/mux';
import { StateStore } from '../../state/store';
import type { VmConfig } from '../../state/vm-record';
import { ShoalError } from '../../util/errors';
import type { JailerChoice } from '../../vmm/select';
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
  const spec = specOf(image, command, flags);
  const onProgress: OnProgress = (event) => progressLine(event.message);
  if (flags.detach === true) {
    // A VM that fails to start stays listed (failed, with why) as it always has for run -d.
    const record = await createVm(store, spec, { onProgress, keepOnFailure: true });
    process.stdout.write(`${record.config.name}\n`);
    return 0;
  }
  const { client, config } = await startVm(store, spec, onProgress);
  return attach(client, config);
}

/** The flags as the core's CreateSpec; the core validates the values (src/core/create.ts). */
function specOf(image: string, command: string[], flags: RunFlags): CreateSpec {
  if (!flags.jailer && (flags.jailerUid ?? flags.jailerGid ?? flags.jailerChroot) !== undefined) {
    throw new ShoalError('--jailer-uid, --jailer-gid and --jailer-chroot go with --jailer');
  }
  // podman's order: the env files first, then each --env over them.
  const fileEnv = readEnvFiles(flags.envFile ?? []);
  let env: Record<string, string>;
  try {
    env = { ...fileEnv, ...parseEnv(flags.env) };
  } catch (err) {
    if (err instanceof ShoalError) throw err;
    throw new ShoalError(`invalid --env: ${(err as Error).message}`);
  }
  const container: ContainerFlags = {};
  for (const key of ['user', 'workdir', 'entrypoint', 'hostname', 'label', 'readOnly', 'init', 'capAdd', 'capDrop', 'privileged', 'stopTimeout'] as const) {
    if (flags[key] !== undefined) (container as Record<string, unknown>)[key] = flags[key];
  }
  const attached = flags.detach !== true;
  return {
    image,
    ...(flags.name !== undefined ? { name: flags.name } : {}),
    cmd: command[0] === '--' ? command.slice(1) : command,
    env,
    cpus: parseCpus(flags.cpus),
    memoryMiB: parseMemory(flags.memory),
    container,
    ...(flags.network !== undefined ? { network: flags.network } : {}),
    publish: flags.publish ?? [],
    // -v/--volume is podman's spelling of --map (a host directory, served over FUSE).
    maps: [...(flags.map ?? []), ...(flags.volume ?? [])],
    ...(flags.healthCheck !== undefined ? { healthCheck: flags.healthCheck } : {}),
    ...(attached ? { attached } : {}),
    ...(flags.interactive === true ? { interactive: true } : {}),
    ...(flags.tty === true ? { tty: terminalSizeNow() } : {}),
    autoRemove: flags.rm === true,
    vmm: parseVmm(flags.vmm),
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
