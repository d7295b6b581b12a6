/**
 * Kernel module dependency resolution from modules.dep (as written by
 * `depmod`), so the initramfs can insmod modules in a valid order without
 * hard-coding it.
 */
import { ShoalError } from '../util/errors';

/** Module name from a path: kernel/drivers/virtio/virtio-ring.ko.xz -> virtio_ring. */
export function moduleName(p: string): string {
  const base = p.slice(p.lastIndexOf('/') + 1);
  return base.replace(/\.ko(\.(xz|gz|zst))?$/, '').replace(/-/g, '_');
}

export interface ModuleDep {
  /** Path relative to /lib/modules/<kver>/, as in modules.dep. */
  path: string;
  /** Dependencies' paths, in modules.dep order (modprobe loads them last-to-first). */
  deps: string[];
}

/** Parses modules.dep text into name -> entry. */
export function parseModulesDep(text: string): Map<string, ModuleDep> {
  const out = new Map<string, ModuleDep>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line) continue;
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    const p = line.slice(0, colon).trim();
    const deps = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter(Boolean);
    out.set(moduleName(p), { path: p, deps });
  }
  return out;
}

/**
 * The module paths to load, dependencies first, for the wanted module names.
 * Names in `optional` that modules.dep doesn't know (e.g. built in) are
 * skipped; any other unknown name, or a dependency cycle, throws.
 */
export function resolveLoadOrder(
  dep: Map<string, ModuleDep>,
  wanted: readonly string[],
  optional: readonly string[] = [],
): string[] {
  const order: string[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visitPath = (p: string, chain: string[]): void => {
    const name = moduleName(p);
    if (done.has(p)) return;
    if (visiting.has(p)) throw new ShoalError(`kernel module dependency cycle: ${[...chain, name].join(' -> ')}`);
    visiting.add(p);
    const entry = dep.get(name);
    // modprobe inserts the dependency list from last to first.
    const deps = entry ? [...entry.deps].reverse() : [];
    for (const d of deps) visitPath(d, [...chain, name]);
    visiting.delete(p);
    done.add(p);
    order.push(p);
  };
  for (const w of wanted) {
    const name = moduleName(w);
    const entry = dep.get(name);
    if (!entry) {
      if (optional.includes(w) || optional.includes(name)) continue;
      throw new ShoalError(`kernel module ${name} not found in modules.dep`);
    }
    visitPath(entry.path, []);
  }
  return order;
}
