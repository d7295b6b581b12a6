/**
 * The initramfs (docs/ARCHITECTURE.md, "Guest boot contract"): the host's
 * static busybox, the virtio/vsock/overlay modules in dependency order, the
 * /init script and the /shoal payload (agent code, protocol code, native
 * addon if built, guest-init). Written as newc cpio + gzip in TS.
 *
 * Input hash: script texts, module list, kernel hash, busybox and payload
 * bytes, so an agent change regenerates only this (a second or so).
 */
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { ShoalError } from '../util/errors';
import { projectRoot } from '../util/paths';
import { ensureAsset, hashParts, type BuildOptions } from './cache';
import type { KernelAsset } from './kernel';
import { parseModulesDep, resolveLoadOrder, moduleName } from './modules';
import { buildNewc, type CpioEntry } from './newc';
import { busyboxPath } from './tools';
import { spawnSync } from 'node:child_process';

/** Modules the initramfs loads (their dependencies come along). */
export const INITRAMFS_MODULES = [
  'virtio_mmio',
  'virtio_blk',
  'virtio_console',
  'vmw_vsock_virtio_transport',
  'overlay',
  // Firecracker's `PUT /entropy` device; a kernel that builds it in, or lacks it, is fine.
  'virtio_rng',
] as const;

/** Modules loaded where the kernel has them (skipped when modules.dep does not list them). */
export const OPTIONAL_INITRAMFS_MODULES: readonly string[] = ['virtio_rng'];

/** What goes under /shoal besides guest-init. */
export interface AgentPayload {
  /** Compiled src/agent (copied to /shoal/agent/agent/). */
  agentDir: string;
  /** Compiled src/protocol (copied to /shoal/agent/protocol/). */
  protocolDir: string;
  /** Compiled src/fuse (copied to /shoal/agent/fuse/): the FUSE device side of --map. */
  fuseDir?: string;
  /** The N-API addon, copied to /shoal/agent/native/ when it exists. */
  nativeAddon: string | null;
  /** Compiled src/native, the addon's typed wrapper (copied to /shoal/agent/native/, next to it). */
  nativeDir?: string;
  /** The node-pty package (the agent's terminals), copied to /shoal/agent/node_modules/node-pty/ when given. */
  nodePty?: string | null;
}

/** The payload from this checkout: dist/src/agent, dist/src/protocol, native/build/Release/shoal_native.node. */
export function defaultPayload(root: string = projectRoot()): AgentPayload {
  return {
    agentDir: path.join(root, 'dist', 'src', 'agent'),
    protocolDir: path.join(root, 'dist', 'src', 'protocol'),
    fuseDir: path.join(root, 'dist', 'src', 'fuse'),
    nativeAddon: path.join(root, 'native', 'build', 'Release', 'shoal_native.node'),
    nativeDir: path.join(root, 'dist', 'src', 'native'),
    nodePty: path.join(root, 'node_modules', 'node-pty'),
  };
}

/** Folder holding the `init` and `guest-init` scripts (the source copy wins over the built copy). */
export function guestScriptsDir(): string {
  const candidates = [path.join(projectRoot(), 'src', 'assets', 'guest'), path.join(__dirname, 'guest')];
  for (const c of candidates) if (fs.existsSync(path.join(c, 'init'))) return c;
  throw new ShoalError(`guest scripts not found (looked in ${candidates.join(', ')})`);
}

export interface PayloadFile {
  /** Path inside the initramfs, without a leading slash. */
  dest: string;
  src: string;
  mode: number;
}

function walk(dir: string, destPrefix: string, out: PayloadFile[]): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir).sort();
  } catch {
    return;
  }
  for (const n of names) {
    const src = path.join(dir, n);
    const st = fs.statSync(src);
    if (st.isDirectory()) walk(src, `${destPrefix}/${n}`, out);
    else if (st.isFile() && !n.endsWith('.map') && !n.endsWith('.tsbuildinfo')) {
      out.push({ dest: `${destPrefix}/${n}`, src, mode: st.mode & 0o111 ? 0o755 : 0o644 });
    }
  }
}

/** The payload's files, in a stable order. */
export function payloadFiles(p: AgentPayload): PayloadFile[] {
  const out: PayloadFile[] = [];
  walk(p.agentDir, 'shoal/agent/agent', out);
  walk(p.protocolDir, 'shoal/agent/protocol', out);
  if (p.fuseDir) walk(p.fuseDir, 'shoal/agent/fuse', out);
  if (p.nativeDir) walk(p.nativeDir, 'shoal/agent/native', out);
  if (p.nativeAddon && fs.existsSync(p.nativeAddon)) {
    out.push({ dest: 'shoal/agent/native/shoal_native.node', src: p.nativeAddon, mode: 0o755 });
  }
  if (p.nodePty && fs.existsSync(path.join(p.nodePty, 'build', 'Release', 'pty.node'))) out.push(...nodePtyFiles(p.nodePty));
  return out;
}

/**
 * What of node-pty runs on Linux: its package.json, the Unix half of lib/ (no tests, no Windows
 * code) and the compiled N-API module, which loads in the guest's Node as it does on the host.
 */
function nodePtyFiles(dir: string): PayloadFile[] {
  const dest = 'shoal/agent/node_modules/node-pty';
  const files: PayloadFile[] = [{ dest: `${dest}/package.json`, src: path.join(dir, 'package.json'), mode: 0o644 }];
  for (const n of fs.readdirSync(path.join(dir, 'lib')).sort()) {
    if (!n.endsWith('.js') || n.endsWith('.test.js') || /^windows|^conpty/.test(n)) continue;
    files.push({ dest: `${dest}/lib/${n}`, src: path.join(dir, 'lib', n), mode: 0o644 });
  }
  files.push({ dest: `${dest}/build/Release/pty.node`, src: path.join(dir, 'build', 'Release', 'pty.node'), mode: 0o755 });
  return files;
}

/** Module paths (relative to the module tree) to insmod, dependencies first. */
export function initramfsModuleOrder(modulesDir: string): string[] {
  const dep = parseModulesDep(fs.readFileSync(path.join(modulesDir, 'modules.dep'), 'utf8'));
  let builtin: string[] = [];
  try {
    builtin = fs
      .readFileSync(path.join(modulesDir, 'modules.builtin'), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map(moduleName);
  } catch {
    /* none */
  }
  return resolveLoadOrder(dep, INITRAMFS_MODULES, [...builtin, ...OPTIONAL_INITRAMFS_MODULES]);
}

/** A module file's bytes, decompressed when the tree ships .ko.xz/.ko.zst/.ko.gz (busybox insmod wants plain .ko). */
function moduleBytes(file: string): { name: string; data: Buffer } {
  const raw = fs.readFileSync(file);
  const base = path.basename(file);
  if (base.endsWith('.ko')) return { name: base, data: raw };
  if (base.endsWith('.ko.gz')) return { name: base.slice(0, -3), data: zlib.gunzipSync(raw) };
  const tool = base.endsWith('.ko.xz') ? 'xz' : base.endsWith('.ko.zst') ? 'zstd' : null;
  if (!tool) throw new ShoalError(`unknown kernel module format: ${file}`);
  const r = spawnSync(tool, ['-dc'], { input: raw, maxBuffer: 256 << 20 });
  if (r.status !== 0) throw new ShoalError(`cannot decompress ${file} with ${tool}`);
  return { name: base.replace(/\.(xz|zst)$/, ''), data: r.stdout };
}

interface Inputs {
  init: string;
  guestInit: string;
  busybox: Buffer;
  modules: string[];
  payload: PayloadFile[];
}

function gatherInputs(kernel: KernelAsset, payload: AgentPayload): Inputs {
  const scripts = guestScriptsDir();
  const bb = busyboxPath();
  if (!bb) throw new ShoalError('missing host tool busybox: run `apt-get install busybox-static`');
  return {
    init: fs.readFileSync(path.join(scripts, 'init'), 'utf8'),
    guestInit: fs.readFileSync(path.join(scripts, 'guest-init'), 'utf8'),
    busybox: fs.readFileSync(bb),
    modules: initramfsModuleOrder(kernel.modulesDir),
    payload: payloadFiles(payload),
  };
}

function hashInputs(kernel: KernelAsset, inp: Inputs): string {
  const parts: Array<string | Buffer> = ['initramfs/v1', kernel.hash, inp.init, inp.guestInit, inp.busybox, inp.modules.join('\n')];
  for (const f of inp.payload) parts.push(f.dest, String(f.mode), fs.readFileSync(f.src));
  return hashParts(parts);
}

/** The initramfs cache hash for this kernel and payload (reads the payload; no building). */
export function initramfsHash(kernel: KernelAsset, payload: AgentPayload = defaultPayload()): string {
  return hashInputs(kernel, gatherInputs(kernel, payload));
}

/** The uncompressed cpio archive. */
export function buildInitramfsArchive(kernel: KernelAsset, inp: Inputs): Buffer {
  const entries: CpioEntry[] = [
    { type: 'dir', path: 'bin' },
    { type: 'dir', path: 'dev' },
    { type: 'dir', path: 'proc', mode: 0o555 },
    { type: 'dir', path: 'sys', mode: 0o555 },
    { type: 'dir', path: 'run' },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
    { type: 'dir', path: 'lower' },
    { type: 'dir', path: 'scratch' },
    { type: 'dir', path: 'newroot' },
    { type: 'char', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
    { type: 'char', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { type: 'file', path: 'init', data: Buffer.from(inp.init), mode: 0o755 },
    { type: 'file', path: 'bin/busybox', data: inp.busybox, mode: 0o755 },
    { type: 'symlink', path: 'bin/sh', target: 'busybox' },
    { type: 'file', path: 'shoal/guest-init', data: Buffer.from(inp.guestInit), mode: 0o755 },
  ];
  const list: string[] = [];
  for (const rel of inp.modules) {
    const { name, data } = moduleBytes(path.join(kernel.modulesDir, rel));
    const dest = path.posix.join(path.posix.dirname(rel), name);
    entries.push({ type: 'file', path: `lib/modules/${dest}`, data, mode: 0o644 });
    list.push(dest);
  }
  entries.push({ type: 'file', path: 'etc/shoal/modules', data: Buffer.from(list.join('\n') + '\n') });
  for (const f of inp.payload) entries.push({ type: 'file', path: f.dest, data: fs.readFileSync(f.src), mode: f.mode });
  return buildNewc(entries);
}

export interface InitramfsAsset {
  dir: string;
  hash: string;
  /** initrd.gz */
  path: string;
  built: boolean;
}

/** Returns the initramfs for this kernel and payload, building it if not cached. */
export async function ensureInitramfs(
  kernel: KernelAsset,
  opts: BuildOptions & { payload?: AgentPayload; progress?: (m: string) => void } = {},
): Promise<InitramfsAsset> {
  const inp = gatherInputs(kernel, opts.payload ?? defaultPayload());
  const hash = hashInputs(kernel, inp);
  const { dir, built } = await ensureAsset(
    'initramfs',
    hash,
    async (tmp) => {
      opts.progress?.(`building initramfs (${inp.modules.length} modules, ${inp.payload.length} payload files)`);
      if (!inp.payload.some((f) => f.dest === 'shoal/agent/agent/main.js')) {
        opts.progress?.('warning: no compiled agent (dist/src/agent/main.js); the guest will not start an agent');
      }
      const cpio = buildInitramfsArchive(kernel, inp);
      fs.writeFileSync(path.join(tmp, 'initrd.gz'), zlib.gzipSync(cpio, { level: 6 }));
      fs.writeFileSync(
        path.join(tmp, 'initramfs.json'),
        JSON.stringify({ kernelHash: kernel.hash, modules: inp.modules, payload: inp.payload.map((f) => f.dest) }, null, 2) + '\n',
      );
    },
    opts,
  );
  return { dir, hash, path: path.join(dir, 'initrd.gz'), built };
}
