/**
 * shoal: run OCI containers inside microVMs. The command tree; each command lives in
 * commands/. Errors meant for the user print as one line and exit non-zero (125, like podman,
 * for shoal's own errors; the container's code otherwise).
 */
import { Command, CommanderError } from 'commander';
import { ShoalError } from '../util/errors';
import { registerCp } from './commands/cp';
import { registerExec } from './commands/exec';
import { registerFork } from './commands/fork';
import { registerInspect } from './commands/inspect';
import { registerLogs } from './commands/logs';
import { registerLs } from './commands/ls';
import { registerPort } from './commands/port';
import { registerRun } from './commands/run';
import { registerSetup } from './commands/setup';
import { registerSnapshot } from './commands/snapshot';
import { registerStopRm } from './commands/stop-rm';
import { registerWait } from './commands/wait';
import { registerServe } from './commands/serve';
import { registerMcp } from './commands/mcp';

function buildProgram(): Command {
  const program = new Command('shoal')
    .description('Run OCI containers inside microVMs, fast, with snapshots and fork(n).')
    .version('0.1.0')
    .enablePositionalOptions()
    .showHelpAfterError(false)
    .exitOverride();

  // Each command declares its own flags beside its handler (podman-style), in help order.
  registerSetup(program);
  registerRun(program);
  registerExec(program);
  registerLs(program);
  registerStopRm(program);
  registerLogs(program);
  registerCp(program);
  registerInspect(program);
  registerWait(program);
  registerPort(program);
  registerSnapshot(program);
  registerFork(program);
  registerServe(program);
  registerMcp(program);

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

/** bin/shoal puts a `--` before the user's arguments (see there); it is not the user's. */
export function userArgv(argv: string[]): string[] {
  return argv[2] === '--' ? [...argv.slice(0, 2), ...argv.slice(3)] : argv;
}

if (require.main === module) void main(userArgv(process.argv));
