/**
 * Interactive terminals end to end: shoal driven through a real host pseudo-terminal, a real
 * terminal in the guest, podman's -t in the container. Keys typed here must act in the guest
 * (Ctrl-C, Ctrl-Z, Ctrl-D, escape sequences), the guest's window must follow the host's, and the
 * host terminal's mode must be the same after shoal as before.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, describe, test } from 'node:test';
import { HostTerminal } from '../helpers/host-terminal';
import { busyboxImageForFile } from '../helpers/images';
import { ShoalSandbox } from '../helpers/shoal-cli';

const sandbox = new ShoalSandbox('tty');
const busybox = busyboxImageForFile();
const terminals: HostTerminal[] = [];

/** Busybox sh's prompt for root at the end of the output so far (its line editor then asks where the cursor is). */
const PROMPT = /# (\x1b\[6n)?$/;
/** A guest answer under TCG takes a second or two; the boot far longer. */
const ANSWER_MS = 20_000;
const BOOT_MS = 150_000;

function openTerminal(args: string[], size: { cols: number; rows: number }): HostTerminal {
  const terminal = new HostTerminal(sandbox, args, size);
  terminals.push(terminal);
  return terminal;
}

/** Types a command line and waits for its output to match. */
async function command(terminal: HostTerminal, line: string, expected: RegExp): Promise<RegExpExecArray> {
  terminal.type(`${line}\r`);
  return terminal.expect(expected, ANSWER_MS);
}

/** Starts a command, gives it a moment to run, types a control key and waits for the effect. */
async function keyWhileRunning(terminal: HostTerminal, line: string, key: string, effect: RegExp): Promise<void> {
  terminal.type(`${line}\r`);
  await terminal.expect(new RegExp(`${line}\\r+\\n`), ANSWER_MS);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  terminal.type(key);
  await terminal.expect(effect, ANSWER_MS);
}

after(() => {
  for (const terminal of terminals) terminal.close();
  sandbox.cleanup();
});

describe('shoal run -it', () => {
  test('a shell: prompt, commands, Ctrl-C, Ctrl-Z, resize, vi, exit code, terminal mode restored', async () => {
    const terminal = openTerminal(['run', '-it', '--rm', '--name', 'tty-run', busybox.ref, 'sh'], { cols: 80, rows: 24 });
    await terminal.expect(PROMPT, BOOT_MS);

    // Arithmetic the shell does: the answer can only come from running the line.
    await command(terminal, 'echo "sum=$((6*7))"', /sum=42/);

    // Ctrl-C interrupts the foreground program, not the shell (and not shoal).
    await keyWhileRunning(terminal, 'sleep 60', '\x03', PROMPT);
    await command(terminal, 'echo "alive=$((1+1))"', /alive=2/);

    // Ctrl-Z stops it, as job control does at a console.
    await keyWhileRunning(terminal, 'sleep 61', '\x1a', /Stopped/);
    await command(terminal, 'kill -9 %1; echo "jobs-done=$((2+2))"', /jobs-done=4/);

    // The window size, at start and after a resize.
    await command(terminal, 'stty size', /\r+\n24 80\r+\n/);
    terminal.resize(100, 30);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await command(terminal, 'stty size', /\r+\n30 100\r+\n/);

    // A full-screen editor: it opens (clears the screen), takes keys including Escape, and quits.
    terminal.type('vi /tmp/note\r');
    await terminal.expect(/\x1b\[[0-9;]*H/, ANSWER_MS);
    // Keys one at a time, as typed: an Escape with more bytes right behind it reads as a key sequence.
    for (const keys of ['iabc', '\x1b', ':wq\r']) {
      terminal.type(keys);
      await new Promise((resolve) => setTimeout(resolve, 700));
    }
    await terminal.expect(PROMPT, ANSWER_MS);
    await command(terminal, 'tr a-c x-z < /tmp/note', /\r+\nxyz\r+\n/);

    terminal.type('exit 3\r');
    await terminal.expect(/SHOAL-EXIT=3/, 60_000);
    await waitForModes(terminal);
    const modes = terminal.modes();
    assert.equal(modes.after, modes.before, 'the host terminal mode changed');
  });

  test('-t alone gives the container a terminal; without one on stdin it warns on one line', async () => {
    const result = await sandbox.run(['run', '--rm', '-t', busybox.ref, 'sh', '-c', 'test -t 0 && test -t 1 && echo on-a-tty; stty size']);
    assert.equal(result.code, 0, result.stderr.toString());
    assert.match(result.stdout.toString(), /on-a-tty\r+\n24 80\r+\n/);
    const warnings = result.stderr.toString().split('\n').filter((line) => /warning/.test(line));
    assert.equal(warnings.length, 1, result.stderr.toString());
    assert.match(warnings[0]!, /not a TTY/);
  });
});

describe('shoal exec -it', () => {
  test('a shell in a detached VM: size, resize, top, Ctrl-D, -t alone, the VM lost mid-session; terminal mode restored', async () => {
    const started = await sandbox.run(['run', '-d', '--name', 'tty-exec', busybox.ref, 'sleep', '1000']);
    assert.equal(started.code, 0, started.stderr.toString());

    const terminal = openTerminal(['exec', '-it', 'tty-exec', '--', 'sh'], { cols: 90, rows: 20 });
    await terminal.expect(PROMPT, 60_000);
    await command(terminal, 'stty size', /\r+\n20 90\r+\n/);
    terminal.resize(120, 40);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await command(terminal, 'stty size', /\r+\n40 120\r+\n/);

    // top draws its screen and quits on a key.
    terminal.type('top\r');
    await terminal.expect(/PID/, ANSWER_MS);
    terminal.type('q');
    await terminal.expect(PROMPT, ANSWER_MS);

    // Ctrl-D at the prompt ends the shell, and with it the exec.
    terminal.type('\x04');
    await terminal.expect(/SHOAL-EXIT=0/, 60_000);
    await waitForModes(terminal);
    const modes = terminal.modes();
    assert.equal(modes.after, modes.before, 'the host terminal mode changed');

    // In the guest OS too (--vm), and -t without a terminal on stdin.
    const tty = await sandbox.run(['exec', '-t', '--vm', 'tty-exec', '--', 'tty']);
    assert.equal(tty.code, 0, tty.stderr.toString());
    assert.match(tty.stdout.toString(), /^\/dev\/pts\/\d+\r+\n$/);
    assert.match(tty.stderr.toString(), /not a TTY/);

    // The error path: the VM goes away under an open session. shoal fails, and still puts the
    // terminal back.
    const orphan = openTerminal(['exec', '-it', 'tty-exec', '--', 'sh'], { cols: 80, rows: 24 });
    await orphan.expect(PROMPT, 60_000);
    const rm = await sandbox.run(['rm', '-f', 'tty-exec']);
    assert.equal(rm.code, 0, rm.stderr.toString());
    const [, code] = await orphan.expect(/SHOAL-EXIT=(\d+)/, 30_000);
    assert.notEqual(code, '0');
    await waitForModes(orphan);
    const orphanModes = orphan.modes();
    assert.equal(orphanModes.after, orphanModes.before, 'the host terminal mode changed after an error');
    assert.deepEqual(sandbox.processes().map(commandLine), []);
  });
});

function commandLine(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return `${pid} (gone)`;
  }
}

/** The wrapper shell writes the mode file right after printing the exit code. */
async function waitForModes(terminal: HostTerminal): Promise<void> {
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    try {
      terminal.modes();
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  terminal.modes();
}
