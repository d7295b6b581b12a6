/**
 * Signals for a kept process's whole group, so a compound command (`sh -c 'a & b & wait'`)
 * ends entirely: kept processes start in a session and process group of their own. For an exec
 * into the container, the group's leader is crun (`crun exec` waits for the container process
 * and reports its status): it is spared, so the status it reports is the container process's,
 * and the container process's own group is signalled too should crun have given it one.
 */
import fs from 'node:fs';
import { execPid } from './container-exec';

/** The process group of pid, from /proc (undefined when it is gone). */
export function groupOf(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so read after its last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const pgrp = Number(fields[2]);
    return Number.isInteger(pgrp) && pgrp > 0 ? pgrp : undefined;
  } catch {
    return undefined;
  }
}

/** Every process (but `spare`) in one of `groups`. */
function membersOf(groups: Set<number>, spare: number): number[] {
  let names: string[];
  try {
    names = fs.readdirSync('/proc');
  } catch {
    return [];
  }
  const members: number[] = [];
  for (const name of names) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === spare) continue;
    const group = groupOf(pid);
    if (group !== undefined && groups.has(group)) members.push(pid);
  }
  return members;
}

function kill(target: number, signal: string): void {
  try {
    process.kill(target, signal as NodeJS.Signals);
  } catch {
    // gone, or an unknown signal name
  }
}

/**
 * Delivers signal to the group led by leader (a kept process, started with setsid). With a
 * pid file (an exec into the container through crun), to the container process's group and the
 * leader's except crun itself; before the container process exists, to crun.
 */
export function signalGroup(leader: number, signal: string, pidFile?: string): void {
  if (pidFile === undefined) {
    kill(-leader, signal);
    return;
  }
  const groups = new Set<number>([leader]);
  const containerPid = execPid(pidFile);
  const containerGroup = containerPid !== undefined ? groupOf(containerPid) : undefined;
  if (containerGroup !== undefined) groups.add(containerGroup);
  const members = membersOf(groups, leader);
  if (members.length === 0) kill(leader, signal);
  for (const pid of members) kill(pid, signal);
}
