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
  /**
   * With KVM: what QEMU's `-cpu host` needed on this host to boot, e.g. ['-arch-capabilities']
   * where a nested KVM refuses MSR 0x10a (absent: nothing).
   */
  kvmCpuFlags?: string[];
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

/**
 * CPU models the probe tries, in order. Some nested hosts fail QEMU's KVM start on MSR 0x10a
 * (IA32_ARCH_CAPABILITIES: "failed to set MSR 0x10a", an assertion in kvm_buf_set_msrs) with
 * `-cpu host`; hiding that MSR's feature boots there.
 */
export const KVM_CPU_FLAG_CANDIDATES: readonly string[][] = [[], ['-arch-capabilities']];

/** One boot under KVM with `-cpu host` plus these flags, until the probe marker or the deadline. */
export type KvmBootAttempt = (cpuFlags: readonly string[]) => Promise<SerialRun>;

/**
 * Boots kernel+initrd under KVM with shoal.probe=1 and reports whether it reached the initramfs,
 * with the first CPU model of KVM_CPU_FLAG_CANDIDATES that did. A timeout ends the probe at once
 * (a hanging KVM is broken whatever the model); a failed start tries the next model.
 */
export async function probeKvm(
  kernel: string,
  initrd: string,
  baseCmdline: string,
  timeoutMs = PROBE_TIMEOUT_MS,
  attempt?: KvmBootAttempt,
): Promise<{ accel: Accelerator; reason: string; kvmCpuFlags?: string[] }> {
  let boot = attempt;
  if (!boot) {
    const dev = kvmDeviceProblem();
    if (dev) return { accel: 'tcg', reason: dev };
    const qemu = which('qemu-system-x86_64');
    if (!qemu) return { accel: 'tcg', reason: 'qemu-system-x86_64 not installed' };
    boot = (cpuFlags) => runUntilSerial(qemu, [
      '-M', 'microvm', '-accel', 'kvm', '-cpu', ['host', ...cpuFlags].join(','), '-m', '256', '-smp', '1',
      '-nodefaults', '-no-user-config', '-nographic', '-serial', 'stdio',
      '-kernel', kernel, '-initrd', initrd, '-append', `${baseCmdline} shoal.probe=1`, '-no-reboot',
    ], PROBE_MARKER, timeoutMs);
  }
  const failures: string[] = [];
  for (const cpuFlags of KVM_CPU_FLAG_CANDIDATES) {
    const model = ['host', ...cpuFlags].join(',');
    const r = await boot(cpuFlags);
    if (r.matched) {
      return { accel: 'kvm', reason: `KVM boot probe reached the initramfs in ${r.ms} ms with -cpu ${model}${failures.length ? ` (${failures.join('; ')})` : ''}`, ...(cpuFlags.length ? { kvmCpuFlags: [...cpuFlags] } : {}) };
    }
    if (r.timedOut) return { accel: 'tcg', reason: `KVM boot probe timed out after ${Math.round(timeoutMs / 1000)} s with -cpu ${model} (broken nested KVM?)` };
    const tail = r.output.trim().split('\n').slice(-2).join(' | ').slice(0, 300);
    failures.push(`-cpu ${model} failed (${r.signal ?? `exit ${r.code}`}): ${tail}`);
  }
  return { accel: 'tcg', reason: `KVM boot probe failed: ${failures.join('; ')}` };
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
  const rec: AccelRecord = { accel: v.accel, reason: v.reason, probedAt: new Date().toISOString(), kernelHash: opts.kernelHash, ...(v.kvmCpuFlags ? { kvmCpuFlags: v.kvmCpuFlags } : {}) };
  fs.mkdirSync(root, { recursive: true });
  writeFileAtomic(accelFile(root), JSON.stringify(rec, null, 2) + '\n', 0o644); // public, like the assets it names: unprivileged users boot VMs from this cache
  opts.progress?.(`accelerator: ${rec.accel} (${rec.reason})`);
  return { ...rec, probed: true };
}
