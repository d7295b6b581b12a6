/**
 * Turns a VmSpec into a qemu-system-x86_64 command line for the microvm machine.
 * Pure, so the device layout can be unit-tested without starting QEMU.
 */
import path from 'node:path';
import { SERIAL_PORT_NAME } from '../../protocol/transport';
import type { DriveSpec, NetSpec, VmSpec } from '../backend';
import { ShoalError } from '../../util/errors';

export interface QemuPaths {
  qmpSocket: string;
  agentSocket: string;
}

export function qemuPaths(runDir: string): QemuPaths {
  return { qmpSocket: path.join(runDir, 'qmp.sock'), agentSocket: path.join(runDir, 'agent.sock') };
}

export interface QemuLaunch {
  spec: VmSpec;
  drives: DriveSpec[];
  net?: NetSpec;
  consoleLog: string;
  paths: QemuPaths;
  /**
   * Guest RAM in a file: shared (the source of future snapshots; writes land in the file) or
   * private (a clone: MAP_PRIVATE of the snapshot's file, so clones share its pages in the page
   * cache and copy only what they write).
   */
  memory?: { path: string; share: boolean };
  /** Wait for an incoming migration stream (restore) instead of booting. */
  incoming?: boolean;
}

/**
 * TCG's translation cache in MiB (`-accel tcg,tb-size=`) per path, or undefined for QEMU's own
 * default (1 GiB in QEMU 7.2, reserved and touched only as code is translated). Measured by
 * bench/run-cold (TB_SIZES=32,0, interleaved) and issue 24's own pairs: a boot translates the
 * whole kernel and userland once, and with 32 MiB the full cache is flushed and everything is
 * translated again (cold runs 1.4 to 2x slower); a restore runs code the guest already ran, its
 * first exec costs the same either way, and a clone's QEMU PSS was 173 MiB with 32 MiB against
 * 212 MiB with QEMU's default: the memory a fork pays per child. So boots take QEMU's default
 * and restores (clones, forks, image-cache hits) 32 MiB. SHOAL_TCG_TB_MIB sets one size for
 * both (0: QEMU's default).
 */
export const RESTORE_TCG_TB_SIZE_MIB = 32;

export function tcgTbSizeMiB(restore: boolean, env: NodeJS.ProcessEnv = process.env): number | undefined {
  const raw = env.SHOAL_TCG_TB_MIB;
  if (raw === undefined || raw === '') return restore ? RESTORE_TCG_TB_SIZE_MIB : undefined;
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value > 4096) throw new ShoalError(`SHOAL_TCG_TB_MIB must be a whole number of MiB up to 4096 (0: QEMU's default), not ${JSON.stringify(raw.slice(0, 32))}`);
  return value === 0 ? undefined : value;
}

function tcgAccel(restore: boolean): string {
  const tb = tcgTbSizeMiB(restore);
  return tb === undefined ? 'tcg,thread=single' : `tcg,thread=single,tb-size=${tb}`;
}

export function buildQemuArgv(launch: QemuLaunch): string[] {
  const { spec } = launch;
  const kvm = spec.accel === 'kvm';
  const argv = [
    '-machine', 'microvm,x-option-roms=off,isa-serial=on,rtc=on',
    // Multi-threaded TCG (one host thread per vCPU) left 2-vCPU guests in soft lockups on a
    // loaded 2-core host; one thread running all vCPUs in turn does not.
    '-accel', kvm ? 'kvm' : tcgAccel(launch.incoming === true),
    '-cpu', kvm ? ['host', ...(spec.kvmCpuFlags ?? [])].join(',') : 'max',
    '-smp', String(spec.cpus),
    '-m', `${spec.memoryMiB}M`,
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    // QEMU's seccomp filter: no obsolete syscalls, no set*uid/gid, no scheduler or affinity
    // changes. Spawning stays allowed: snapshots migrate through `exec:cat` (QEMU 7.2 has no
    // `file:` migration), which QEMU forks.
    '-sandbox', 'on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny',
    '-chardev', `file,id=console,path=${launch.consoleLog},append=on`,
    '-serial', 'chardev:console',
    '-kernel', spec.kernel,
    '-append', spec.cmdline,
    '-qmp', `unix:${launch.paths.qmpSocket},server=on,wait=off`,
    '-device', 'virtio-rng-device',
    '-device', 'virtio-serial-device',
    '-chardev', `socket,id=agent,path=${launch.paths.agentSocket},server=on,wait=off`,
    '-device', `virtserialport,chardev=agent,name=${SERIAL_PORT_NAME}`,
  ];
  if (spec.initrd) argv.push('-initrd', spec.initrd);
  if (launch.memory) {
    argv.push(
      '-object', `memory-backend-file,id=ram,size=${spec.memoryMiB}M,mem-path=${launch.memory.path},share=${launch.memory.share ? 'on' : 'off'}`,
      '-machine', 'memory-backend=ram',
    );
  }
  for (const drive of launch.drives) {
    argv.push(
      '-drive', `id=${drive.id},file=${drive.path},format=raw,if=none,readonly=${drive.readOnly ? 'on' : 'off'}`,
      '-device', `virtio-blk-device,drive=${drive.id},serial=${drive.id}`,
    );
  }
  if (launch.net) argv.push(...netArgs(launch.net));
  if (launch.incoming) argv.push('-incoming', 'defer');
  return argv;
}

function netArgs(net: NetSpec): string[] {
  if (net.userMode) {
    const forwards = net.userMode.forwards.map((f) => `,hostfwd=${f.proto}:${f.hostAddress}:${f.hostPort}-:${f.guestPort}`).join('');
    return ['-netdev', `user,id=net0${forwards}`, '-device', `virtio-net-device,netdev=net0,mac=${net.mac}`];
  }
  if (net.tap) {
    return ['-netdev', `tap,id=net0,ifname=${net.tap},script=no,downscript=no`, '-device', `virtio-net-device,netdev=net0,mac=${net.mac}`];
  }
  return [];
}
