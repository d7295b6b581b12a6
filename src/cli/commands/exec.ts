/**
 * `shoal exec NAME [--vm] [-i] -- CMD...`: runs a command in the VM's container (or, with --vm,
 * in the guest OS) with the same stdio and exit-code rules as run.
 */
import type { Command } from 'commander';
import { act } from '../act';
import { collect } from '../options';
import { parseEnv } from '../../container/podman-argv';
import { parseUser, parseWorkdir } from '../../container/container-options';
import { readEnvFiles } from '../../container/env-file';
import { attachChannel } from '../../host/exec-client';
import { StateStore, statusOf } from '../../state/store';
import { ShoalError } from '../../util/errors';
import { sendClientMessage, SupervisorClient } from '../../control/client';
import { execRequest } from '../../core';
import { releaseStdin, startTerminal } from '../terminal';

export interface ExecFlags {
  vm?: boolean;
  interactive?: boolean;
  tty?: boolean;
  env: string[];
  envFile?: string[];
  user?: string;
  workdir?: string;
}

export async function execCommand(nameOrId: string, command: string[], flags: ExecFlags): Promise<number> {
  // Flags first: bad input is refused before anything is looked up.
  if (flags.vm && (flags.user ?? flags.workdir) !== undefined) throw new ShoalError('--user and --workdir are for the container, not --vm');
  const user = flags.user === undefined ? undefined : parseUser(flags.user);
  const workdir = flags.workdir === undefined ? undefined : parseWorkdir(flags.workdir);
  const fileEnv = readEnvFiles(flags.envFile ?? []);
  const store = new StateStore();
  const record = store.get(nameOrId);
  const status = statusOf(record);
  if (status !== 'running') throw new ShoalError(`VM ${record.config.name} is ${status}, not running`);
  const argv = command[0] === '--' ? command.slice(1) : command;
  if (argv.length === 0) throw new ShoalError('exec needs a command to run');
  let env: Record<string, string>;
  try {
    env = { ...fileEnv, ...parseEnv(flags.env) };
  } catch (err) {
    throw new ShoalError(`invalid --env: ${(err as Error).message}`);
  }
  // The request every front end sends (src/core/exec.ts), so API and CLI execs take one path.
  const request = execRequest({ argv, env, stdin: flags.interactive === true, vm: flags.vm === true, ...(user !== undefined ? { user } : {}), ...(workdir !== undefined ? { cwd: workdir } : {}) });
  const client = await SupervisorClient.connect(store, record);
  const terminal = flags.tty ? startTerminal(flags.interactive === true) : undefined;
  if (terminal) request.tty = terminal.size;
  const channel = client.exec(request);
  terminal?.onResize((size) => sendClientMessage(channel, { type: 'resize', ...size }));
  const forward = (signal: NodeJS.Signals): void => sendClientMessage(channel, { type: 'signal', signal });
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const signal of signals) process.on(signal, forward);
  try {
    const io: Parameters<typeof attachChannel>[1] = { stdout: process.stdout, stderr: process.stderr };
    if (flags.interactive) io.stdin = process.stdin;
    return await attachChannel(channel, io);
  } finally {
    terminal?.restore();
    for (const signal of signals) process.off(signal, forward);
    releaseStdin();
    client.close();
  }
}

/** The command's flags, declared beside its handler. */
export function registerExec(program: Command): void {
  program
    .command('exec')
    .description('run a command in a running VM\'s container (or, with --vm, in the guest OS)')
    .argument('<name>', 'VM name or id')
    .argument('<command...>', 'command and arguments (after --)')
    .option('--vm', 'run in the guest OS instead of the container')
    .option('-i, --interactive', 'pass stdin')
    .option('-t, --tty', 'run the command on a terminal (with -i: an interactive session)')
    .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect, [])
    .option('--env-file <file>', 'read KEY=VALUE lines from a file, podman\'s format (repeatable)', collect, [])
    .option('-u, --user <user[:group]>', 'run the command as this user (name or uid)')
    .option('-w, --workdir <dir>', 'the working directory in the container (absolute)')
    // As podman: options after the command are the command's (`exec web sh -c ...`).
    .passThroughOptions()
    .action(act((name: string, command: string[], flags: Parameters<typeof execCommand>[2]) => execCommand(name, command, flags)));
}
