/**
 * `shoal cp` operands, as podman cp reads them: `NAME:PATH` names a path in a VM's container,
 * anything else a host path (write a local path with a colon as ./a:b). Exactly one side is in a
 * container, and a container path may not climb above the container's root.
 */
import path from 'node:path';
import { NAME_PATTERN } from '../state/vm-record';
import { ShoalError } from '../util/errors';

export type CpOperand = { kind: 'host'; path: string } | { kind: 'container'; vm: string; path: string };

export function parseCpOperand(value: string): CpOperand {
  const colon = value.indexOf(':');
  const head = colon < 0 ? '' : value.slice(0, colon);
  if (colon > 0 && !value.startsWith('/') && !value.startsWith('.') && NAME_PATTERN.test(head)) {
    return { kind: 'container', vm: head, path: containerPath(value.slice(colon + 1), value) };
  }
  if (value === '') throw new ShoalError('cp: an empty path');
  return { kind: 'host', path: value };
}

/** Refuses paths that leave the container's root ("/../x", "a/../../x") and ones podman cannot take. */
export function containerPath(raw: string, typed: string = raw): string {
  if (raw === '') throw new ShoalError(`cp: "${typed}" has no path after the colon`);
  if (raw.length > 4096 || /[\0\n]/.test(raw)) throw new ShoalError(`cp: "${typed.slice(0, 80)}" is not a usable path`);
  let depth = 0;
  for (const part of raw.split('/')) {
    if (part === '..') depth--;
    else if (part !== '' && part !== '.') depth++;
    if (depth < 0) throw new ShoalError(`cp: ${raw} is outside the container`);
  }
  return raw;
}

export interface CpPlan {
  direction: 'to-container' | 'from-container';
  vm: string;
  containerPath: string;
  hostPath: string;
}

export function planCp(src: string, dest: string): CpPlan {
  const from = parseCpOperand(src);
  const to = parseCpOperand(dest);
  if (from.kind === 'container' && to.kind === 'container') throw new ShoalError('cp: copying between containers is not supported; one side must be a host path');
  if (from.kind === 'host' && to.kind === 'host') throw new ShoalError('cp: one side must be NAME:PATH (a VM\'s container)');
  if (from.kind === 'container') return { direction: 'from-container', vm: from.vm, containerPath: from.path, hostPath: (to as { path: string }).path };
  const target = to as { vm: string; path: string };
  return { direction: 'to-container', vm: target.vm, containerPath: target.path, hostPath: from.path };
}

/** The tar member the host side sends for a host source (`dir/.` sends the directory's contents). */
export function hostSourceParts(source: string): { dir: string; entry: string } {
  const trimmed = source.length > 1 ? source.replace(/\/+$/, '') : source;
  if (trimmed === '.' || trimmed.endsWith('/.')) return { dir: trimmed, entry: '.' };
  return { dir: path.dirname(trimmed), entry: path.basename(trimmed) };
}
