/**
 * `shoal cp SRC DEST`, one side `NAME:PATH`, like podman cp: a tar stream over the exec channel
 * (flow-controlled, never a whole file in memory). podman in the guest owns the container-path
 * semantics (symlinks resolved inside the container's root, a directory into a directory, ...):
 *   into the container: host `tar -c` -> guest `tar -x` into a private directory on the scratch
 *     disk -> `podman cp DIR/ENTRY main:PATH` (so podman cp sees a real path and applies its
 *     rules for an existing or new destination);
 *   out of it: `podman cp main:PATH -` -> unpacked in this process (src/cli/guest-tar.ts: only
 *     files, directories and links, never a set-id bit) into a private 0700 directory beside the
 *     destination -> moved into place.
 * Modes, mtimes and symlinks (as links) travel in the tar. A staging directory (host or guest)
 * names its creator's pid, and the next cp removes those whose creator died (kill -9).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { Command } from 'commander';
import { act } from '../act';
import { hostSourceParts, planCp, type CpPlan } from '../cp-spec';
import { unpackGuestTar } from '../guest-tar';
import { moveInto, stagingPrefix, sweepStaleStaging } from '../host-tree';
import { SupervisorClient } from '../../control/client';
import { MAIN_CONTAINER } from '../../container/podman-argv';
import { attachChannel } from '../../host/exec-client';
import { StateStore, statusOf } from '../../state/store';
import type { VmRecord } from '../../state/vm-record';
import { ShoalError } from '../../util/errors';

/** How much of the guest's error output is kept (its last line becomes the message). */
const MAX_STDERR = 64 * 1024;

/** The guest's side of a copy into the container; the paths come in as arguments, never spliced into the script. */
const INTO_CONTAINER_SCRIPT = [
  'set -e',
  // A cp killed mid-transfer (kill -9 of the CLI ends this shell before its trap) leaves its
  // directory behind; each names its shell's pid, and those whose shell is gone are removed here.
  'for o in /mnt/scratch/.shoal-cp.*; do',
  '  [ -d "$o" ] || continue',
  '  p=${o#/mnt/scratch/.shoal-cp.}; p=${p%%.*}',
  '  case $p in (""|*[!0-9]*) rm -rf "$o"; continue;; esac',
  '  kill -0 "$p" 2>/dev/null || rm -rf "$o"',
  'done',
  'd=$(mktemp -d /mnt/scratch/.shoal-cp.$$.XXXXXX)',
  'trap \'rm -rf "$d"\' EXIT',
  'tar -x -f - -C "$d"',
  'podman cp "$d/$1" "$2:$3"',
].join('\n');

export async function cpCommand(src: string, dest: string): Promise<number> {
  const plan = planCp(src, dest);
  const store = new StateStore();
  const record = store.get(plan.vm);
  const status = statusOf(record);
  if (status !== 'running') throw new ShoalError(`VM ${record.config.name} is ${status}, not running`);
  if (plan.direction === 'to-container') {
    try {
      fs.lstatSync(plan.hostPath);
    } catch {
      throw new ShoalError(`cp: ${plan.hostPath}: no such file or directory`);
    }
    await copyIn(store, record, plan);
  } else {
    await copyOut(store, record, plan);
  }
  return 0;
}

class TailSink extends Writable {
  private tail = Buffer.alloc(0);
  override _write(chunk: Buffer, _e: BufferEncoding, done: () => void): void {
    this.tail = Buffer.concat([this.tail, chunk]).subarray(-MAX_STDERR);
    done();
  }
  lastLine(): string {
    const lines = this.tail.toString('utf8').trim().split('\n');
    return (lines[lines.length - 1] ?? '').replace(/^Error:\s*/, '');
  }
}

function exited(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode);
    else child.once('close', (code) => resolve(code ?? 128));
  });
}

async function copyIn(store: StateStore, record: VmRecord, plan: CpPlan): Promise<void> {
  const { dir, entry } = hostSourceParts(plan.hostPath);
  const client = await SupervisorClient.connect(store, record, 5000);
  const tar = spawn('tar', ['-c', '-f', '-', '-C', dir, '--', entry], { stdio: ['ignore', 'pipe', 'pipe'] });
  const tarErr = new TailSink();
  tar.stderr!.pipe(tarErr);
  const stderr = new TailSink();
  try {
    const channel = client.exec({
      argv: ['sh', '-c', INTO_CONTAINER_SCRIPT, 'shoal-cp', entry, MAIN_CONTAINER, plan.containerPath],
      env: {},
      interactive: true,
      vm: true,
    });
    const code = await attachChannel(channel, { stdin: tar.stdout!, stdout: new TailSink(), stderr });
    const tarCode = await exited(tar);
    if (tarCode !== 0) throw new ShoalError(`cp: reading ${plan.hostPath} failed: ${tarErr.lastLine() || `tar exited ${tarCode}`}`);
    if (code !== 0) throw new ShoalError(`cp: ${stderr.lastLine() || `copying into ${record.config.name} failed (${code})`}`);
  } finally {
    if (tar.exitCode === null) tar.kill('SIGKILL');
    client.close();
  }
}

async function copyOut(store: StateStore, record: VmRecord, plan: CpPlan): Promise<void> {
  const dest = plan.hostPath;
  let destIsDir = false;
  try {
    destIsDir = fs.statSync(dest).isDirectory();
  } catch {
    if (dest.endsWith('/')) throw new ShoalError(`cp: ${dest}: no such directory`);
  }
  const parent = destIsDir ? dest : path.dirname(dest);
  try {
    if (!fs.statSync(parent).isDirectory()) throw new Error();
  } catch {
    throw new ShoalError(`cp: ${parent}: no such directory`);
  }
  sweepStaleStaging(parent);
  const staging = fs.mkdtempSync(stagingPrefix(parent)); // 0700, and never chmodded until it is removed
  try {
    const client = await SupervisorClient.connect(store, record, 5000);
    try {
      const unpack = unpackGuestTar(staging, (line) => process.stderr.write(`shoal: cp: ${line}\n`));
      const stderr = new TailSink();
      const channel = client.exec({ argv: ['podman', 'cp', `${MAIN_CONTAINER}:${plan.containerPath}`, '-'], env: {}, interactive: false, vm: true });
      let code: number;
      try {
        code = await attachChannel(channel, { stdout: unpack.sink, stderr });
      } finally {
        unpack.sink.end();
      }
      if (code !== 0) throw new ShoalError(`cp: ${stderr.lastLine() || `copying out of ${record.config.name} failed (${code})`}`);
      try {
        await unpack.done;
      } catch (err) {
        throw new ShoalError(`cp: unpacking into ${parent} failed: ${(err as Error).message}`);
      }
      unpack.settleModes();
      place(staging, dest, destIsDir, plan.containerPath);
    } finally {
      client.close();
    }
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
}

/** podman cp's placement: into an existing directory under the source's name, else as dest itself. */
function place(staging: string, dest: string, destIsDir: boolean, containerPath: string): void {
  const entries = fs.readdirSync(staging);
  const contentsOnly = /(^|\/)\.\/?$/.test(containerPath); // PATH/. copies the directory's contents
  if (destIsDir) {
    for (const name of entries) moveInto(path.join(staging, name), path.join(dest, name));
    return;
  }
  if (entries.length === 1 && !contentsOnly) {
    moveInto(path.join(staging, entries[0]!), dest);
    return;
  }
  fs.mkdirSync(dest, { mode: 0o755 });
  for (const name of entries) moveInto(path.join(staging, name), path.join(dest, name));
}

/** The command's flags, declared beside its handler. */
export function registerCp(program: Command): void {
  program
    .command('cp')
    .description('copy files and directories between the host and a VM\'s container (NAME:PATH on one side)')
    .argument('<src>', 'a host path or NAME:PATH')
    .argument('<dest>', 'a host path or NAME:PATH')
    .action(act((src: string, dest: string) => cpCommand(src, dest)));
}
