/**
 * shoal: run OCI containers inside microVMs. The command tree; each command lives in
 * commands/. Errors meant for the user print as one line and exit non-zero (125, like podman,
 * for shoal's own errors; the container's code otherwise).
 */
import { Command, CommanderError } from 'commander';
import { ShoalError } from '../util/errors';
import { execCommand } from './commands/exec';
import { forkCommand } from './commands/fork';
import { snapshotCreateCommand, snapshotLsCommand, snapshotRmCommand, snapshotRunCommand } from './commands/snapshot';
import { snapshotServeCommand } from './commands/snapshot-serve';
import { logsCommand } from './commands/logs';
import { lsCommand } from './commands/ls';
import { runCommand } from './commands/run';
import { setupCommand } from './commands/setup';
import { rmCommand, stopCommand } from './commands/stop-rm';
import { collect } from './options';

type Action = (...args: never[]) => number | Promise<number>;

/** Runs a command action and turns its result or error into the process exit code. */
function act<A extends Action>(action: A): (...args: Parameters<A>) => Promise<void> {
  return async (...args: Parameters<A>) => {
    process.exitCode = await action(...args);
  };
}

function buildProgram(): Command {
  const program = new Command('shoal')
    .description('Run OCI containers inside microVMs, fast, with snapshots and fork(n).')
    .version('0.1.0')
    .enablePositionalOptions()
    .showHelpAfterError(false)
    .exitOverride();

  program
    .command('setup')
    .description('build and cache the guest kernel, initramfs and rootfs; probe whether KVM works here')
    .option('--force', 'rebuild everything and probe again')
    .option('--json', 'print the asset paths as JSON')
    .option('--vmm <vmm>', 'also install this VMM: qemu (default) or firecracker')
    .option('--firecracker <path>', 'with --vmm firecracker: use this binary instead of downloading the release')
    .action(act((flags: Parameters<typeof setupCommand>[0]) => setupCommand(flags)));

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
    .option('--network <mode>', 'rootless (default: user-mode networking; QEMU\'s slirp, or slirp4netns on Firecracker), slirp4netns, bridged (root) or none')
    .option('-p, --publish <[ADDR:]HOST:GUEST[/tcp|/udp]>', 'publish a guest port on the host (repeatable, comma-separated)', collect, [])
    .option('--health-check <url>', 'once this URL answers in the guest, snapshot the running app; later runs start from it')
    .option('--jailer', 'run Firecracker under its jailer (chroot, unprivileged uid/gid, cgroup)')
    .option('--jailer-uid <uid>', 'with --jailer: the uid Firecracker drops to (default 65534)')
    .option('--jailer-gid <gid>', 'with --jailer: the gid Firecracker drops to (default 65534)')
    .option('--jailer-chroot <dir>', 'with --jailer: the chroot base directory (default /srv/jailer)')
    .option('--map <HOST:GUEST[:ro]>', 'show a host directory to the container at GUEST, over FUSE (repeatable, comma-separated)', collect, [])
    .passThroughOptions()
    .action(act((image: string, command: string[], flags: Parameters<typeof runCommand>[2]) => runCommand(image, command, flags)));

  program
    .command('exec')
    .description('run a command in a running VM\'s container (or, with --vm, in the guest OS)')
    .argument('<name>', 'VM name or id')
    .argument('<command...>', 'command and arguments (after --)')
    .option('--vm', 'run in the guest OS instead of the container')
    .option('-i, --interactive', 'pass stdin')
    .option('-t, --tty', 'run the command on a terminal (with -i: an interactive session)')
    .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect, [])
    // As podman: options after the command are the command's (`exec web sh -c ...`).
    .passThroughOptions()
    .action(act((name: string, command: string[], flags: Parameters<typeof execCommand>[2]) => execCommand(name, command, flags)));

  program
    .command('ls')
    .alias('ps')
    .description('list VMs')
    .option('--json', 'machine-readable output')
    .action(act((flags: { json?: boolean }) => lsCommand(flags)));

  program
    .command('stop')
    .description('stop VMs (the container gets SIGTERM, then the VM powers off)')
    .argument('<names...>')
    .action(act((names: string[]) => stopCommand(names)));

  program
    .command('rm')
    .description('remove VMs')
    .argument('<names...>')
    .option('-f, --force', 'kill and remove running VMs')
    .action(act((names: string[], flags: { force?: boolean }) => rmCommand(names, flags)));

  program
    .command('logs')
    .description('print a VM\'s container output (or its guest console)')
    .argument('<name>')
    .option('--console', 'print the guest serial console instead')
    .action(act((name: string, flags: { console?: boolean }) => logsCommand(name, flags)));

  const snapshot = program.command('snapshot').description('snapshots of running VMs, and VMs restored from them');
  snapshot
    .command('create')
    .description('snapshot a running VM (memory, device state, scratch disk); the VM keeps running')
    .argument('<name>', 'VM name or id')
    .requiredOption('--tag <tag>', 'name of the snapshot')
    .option('--json', 'print the manifest as JSON')
    .action(act((name: string, flags: { tag?: string; json?: boolean }) => snapshotCreateCommand(name, flags)));
  snapshot
    .command('ls')
    .description('list snapshots')
    .option('--json', 'machine-readable output')
    .action(act((flags: { json?: boolean }) => snapshotLsCommand(flags)));
  snapshot
    .command('rm')
    .description('remove snapshots (VMs restored from them keep running)')
    .argument('<tags...>')
    .action(act((tags: string[]) => snapshotRmCommand(tags)));
  snapshot
    .command('run')
    .description('start a new VM from a snapshot; its container is already running')
    .requiredOption('--snapshot <tag>', 'the snapshot to restore')
    .option('--name <name>', 'name of the new VM')
    .option('--rm', 'remove the VM when its container exits')
    .option('--exec', 'run the command after -- in the clone\'s container, print its output, exit with its code, remove the clone')
    .option('-p, --publish <[ADDR:]HOST:GUEST[/tcp|/udp]>', 'publish a guest port of the clone on the host (repeatable)', collect, [])
    .option('--pid <pid>', 'Firecracker: take the clone\'s memory from this `snapshot serve` process (Uffd backend)')
    .argument('[command...]', 'with --exec: command and arguments (after --)')
    .passThroughOptions()
    .action(act((command: string[], flags: Parameters<typeof snapshotRunCommand>[1]) => snapshotRunCommand(command, flags)));

  snapshot
    .command('serve')
    .description('serve a snapshot\'s memory to Firecracker clones (Uffd backend) until interrupted')
    .argument('<tag>', 'the snapshot')
    .option('--socket <path>', 'the Unix socket to listen on (default <state>/serve/<pid>.sock)')
    .option('--json', 'print {pid, tag, socket} as JSON')
    .action(act((tag: string, flags: { socket?: string; json?: boolean }) => snapshotServeCommand(tag, flags)));

  program
    .command('fork')
    .description('snapshot a running VM and start N clones of it at once (NAME-1..NAME-N)')
    .argument('<name>', 'VM name or id')
    .option('-n, --count <n>', 'number of clones', '1')
    .option('--name-prefix <prefix>', 'name the clones PREFIX-1..PREFIX-N')
    .option('-p, --publish <[ADDR:]HOST:GUEST[/proto]>', 'publish a guest port of every clone: clone i gets host port HOST+i-1 (repeatable)', collect, [])
    .option('--json', 'print the clones as JSON')
    .action(act((name: string, flags: { count: string; namePrefix?: string; publish: string[]; json?: boolean }) => {
      const forkFlags: Parameters<typeof forkCommand>[1] = { n: flags.count, publish: flags.publish };
      if (flags.namePrefix !== undefined) forkFlags.namePrefix = flags.namePrefix;
      if (flags.json !== undefined) forkFlags.json = flags.json;
      return forkCommand(name, forkFlags);
    }));

  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander already printed its message (help, version or a usage error).
      process.exitCode = err.exitCode === 0 ? 0 : 125;
      return;
    }
    if (err instanceof ShoalError) {
      process.stderr.write(`shoal: ${err.message}\n`);
      process.exitCode = err.exitCode;
      return;
    }
    process.stderr.write(`shoal: internal error: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 125;
  }
}

if (require.main === module) void main(process.argv);
