/**
 * The KVM boot probe. /dev/kvm existing proves nothing (a broken nested KVM
 * hangs guest kernels), so KVM counts as usable only when the real kernel and
 * initramfs boot under it to the initramfs's `SHOAL-PROBE-OK` within a hard
 * timeout. The verdict is cached in `<cache>/accel.json` per kernel.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Accelerator } from '../vmm/backend';
import { cacheDir } from '../util/paths';
import { writeFileAtomic } from '../state/atomic';
import { which } from './tools';

export { missingTools, requireTools, HOST_TOOLS, type MissingTool } from './tools';

export const PROBE_MARKER = 'SHOAL-PROBE-OK';
export const PROBE_TIMEOUT_MS = 15_000;

export interface AccelRecord {
  accel: Accelerator;
  reason: string;
  probedAt: string;
  /** The kernel asset hash this verdict is for. */
  kernelHash: string;
}

export interface SerialRun {
  /** True when the pattern appeared before the deadline. */
  matched: boolean;
  timedOut: boolean;
  output: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  ms: number;
}

/**
 * Runs a VMM whose serial console is on stdout until `pattern` appears, the
 * process exits, or timeoutMs passes. The process is always SIGKILLed (if
 * still running) and reaped before this resolves. With `stopOnMatch` false,
 * it keeps running after a match until it exits or times out.
 */
export function runUntilSerial(
  cmd: string,
  args: readonly string[],
  pattern: string | RegExp,
  timeoutMs: number,
  opts: { stopOnMatch?: boolean; onOutput?: (chunk: string) => void } = {},
): Promise<SerialRun> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    let matched = false;
    let timedOut = false;
    const test = (): boolean => (typeof pattern === 'string' ? output.includes(pattern) : pattern.test(output));
    const kill = (): void => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    };
    const timer = setTimeout(() => {
      timedOut = true;
      kill();
    }, timeoutMs);
    const onData = (b: Buffer): void => {
      const s = b.toString('utf8');
      output += s;
      opts.onOutput?.(s);
      if (!matched && test()) {
        matched = true;
        if (opts.stopOnMatch !== false) kill();
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (e) => {
      output += `\n[spawn error: ${e.message}]`;
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ matched, timedOut: timedOut && !matched, output, code, signal, ms: Date.now() - t0 });
    });
  });
}

/** Why /dev/kvm cannot even be tried, or null. */
export function kvmDeviceProblem(): string | null {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return null;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? '/dev/kvm does not exist' : `/dev/kvm is not usable (${code})`;
  }
}

/** Boots kernel+initrd under KVM with shoal.probe=1 and reports whether it reached the initramfs. */
export async function probeKvm(
  kernel: string,
  initrd: string,
  baseCmdline: string,
  timeoutMs = PROBE_TIMEOUT_MS,
): Promise<{ accel: Accelerator; reason: string }> {
  const dev = kvmDeviceProblem();
  if (dev) return { accel: 'tcg', reason: dev };
  const qemu = which('qemu-system-x86_64');
  if (!qemu) return { accel: 'tcg', reason: 'qemu-system-x86_64 not installed' };
  const args = [
    '-M', 'microvm', '-accel', 'kvm', '-cpu', 'host', '-m', '256', '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio',
    '-kernel', kernel, '-initrd', initrd, '-append', `${baseCmdline} shoal.probe=1`, '-no-reboot',
  ];
  const r = await runUntilSerial(qemu, args, PROBE_MARKER, timeoutMs);
  if (r.matched) return { accel: 'kvm', reason: `KVM boot probe reached the initramfs in ${r.ms} ms` };
  if (r.timedOut) return { accel: 'tcg', reason: `KVM boot probe timed out after ${Math.round(timeoutMs / 1000)} s (broken nested KVM?)` };
  const tail = r.output.trim().split('\n').slice(-2).join(' | ').slice(0, 300);
  return { accel: 'tcg', reason: `KVM boot probe failed (${r.signal ?? `exit ${r.code}`}): ${tail}` };
}

export function accelFile(root: string = cacheDir()): string {
  return path.join(root, 'accel.json');
}

export function readAccel(root: string = cacheDir()): AccelRecord | null {
  try {
    const r = JSON.parse(fs.readFileSync(accelFile(root), 'utf8')) as AccelRecord;
    if ((r.accel === 'kvm' || r.accel === 'tcg') && typeof r.kernelHash === 'string') return r;
  } catch {
    /* absent or corrupt */
  }
  return null;
}

/** The cached verdict for this kernel, or a fresh probe (when absent, for another kernel, or forced). */
export async function ensureAccel(opts: {
  kernel: string;
  initrd: string;
  kernelHash: string;
  baseCmdline: string;
  force?: boolean;
  root?: string;
  progress?: (m: string) => void;
  timeoutMs?: number;
}): Promise<AccelRecord & { probed: boolean }> {
  const root = opts.root ?? cacheDir();
  const cached = readAccel(root);
  if (!opts.force && cached && cached.kernelHash === opts.kernelHash) return { ...cached, probed: false };
  opts.progress?.('probing KVM (boots the guest kernel under KVM, up to 15 s)');
  const v = await probeKvm(opts.kernel, opts.initrd, opts.baseCmdline, opts.timeoutMs);
  const rec: AccelRecord = { accel: v.accel, reason: v.reason, probedAt: new Date().toISOString(), kernelHash: opts.kernelHash };
  fs.mkdirSync(root, { recursive: true });
  writeFileAtomic(accelFile(root), JSON.stringify(rec, null, 2) + '\n', 0o644); // public, like the assets it names: unprivileged users boot VMs from this cache
  opts.progress?.(`accelerator: ${rec.accel} (${rec.reason})`);
  return { ...rec, probed: true };
}
