/**
 * When a VM may use the image cache and its startup snapshots, under which key, and saving an
 * entry (src/snapshot/image-cache.ts keeps the entries; the supervisor decides when to restore).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { imageSourceOf } from '../container/image-ref';
import { evictImageCache, imageCacheKey, imageDigest, newImageCacheTempDir, publishImageCache } from '../snapshot/image-cache';
import { buildManifest } from '../snapshot/store';
import type { StateStore } from '../state/store';
import type { VmSpec } from '../vmm/backend';
import { vmmTraits } from '../vmm/traits';
import { snapshotSafe, type Snapshotter } from './snapshotter';
import type { VmRecordHandle } from './vm-record-handle';

export interface ImageCacheInputs {
  /** The spec this VM boots with (part of the key: a different kernel line or shape misses). */
  bootSpec(): VmSpec;
  /** The spec the VM runs with now (recorded in the entry's manifest). */
  spec(): VmSpec | undefined;
  progress(message: string): void;
}

export class ImageCachePolicy {
  private keyOnce: Promise<string> | undefined;

  constructor(
    private readonly store: StateStore,
    private readonly record: VmRecordHandle,
    private readonly snapshotter: Snapshotter,
    private readonly inputs: ImageCacheInputs,
  ) {}

  /** Computed once: it hashes the whole image archive, and a startup-snapshot run needs it twice. */
  key(): Promise<string> {
    this.keyOnce ??= (async () => {
      const record = this.record.current;
      const digest = await imageDigest(imageSourceOf(record.config));
      return imageCacheKey(digest, record.config, this.inputs.bootSpec(), record.backend, record.accel);
    })();
    return this.keyOnce;
  }

  /** Whether this VM may use (and be saved to) the image cache. */
  usable(): boolean {
    const { config } = this.record.current;
    // A bridged VM's address (or a pod namespace's) is on its kernel command line, which is part
    // of the cache key: no later run (with an address of its own) would ever hit its entry.
    return config.imageCache !== false && vmmTraits(this.record.current.backend).imageCache && config.network !== 'bridged' && config.network !== 'ns' && snapshotSafe(this.record.current.accel, config.cpus);
  }

  /**
   * The startup snapshot's cache key (the image cache's key and the health-check URL), or
   * undefined when this run takes none: no --health-check, no image cache, or --map (whose FUSE
   * state cannot be snapshotted).
   */
  async startupKey(): Promise<string | undefined> {
    const { config } = this.record.current;
    if (!config.healthCheck || !this.usable() || (config.maps ?? []).length > 0) return undefined;
    const base = await this.key();
    return crypto.createHash('sha256').update(`startup\0${base}\0${config.healthCheck}`).digest('hex').slice(0, 32);
  }

  /** Snapshots the VM (booted, image loaded; or the app running: startup) into the cache under key. */
  async save(key: string, kind: 'image' | 'startup' = 'image'): Promise<void> {
    const temp = newImageCacheTempDir(this.store, key);
    try {
      if (kind === 'image') this.inputs.progress('saving the loaded image to the image cache');
      const timings = await this.snapshotter.take(temp, () => undefined);
      const manifest = buildManifest(
        temp,
        {
          tag: `${kind === 'image' ? 'image-cache' : 'startup'}:${key}`,
          source: { id: this.record.current.id, name: this.record.current.config.name },
          backend: this.record.current.backend,
          accel: this.record.current.accel,
          config: this.record.current.config,
          vmSpec: this.inputs.spec()!,
          loadedImage: this.record.current.loadedImage,
          parent: this.record.current.restoredFrom,
          timings,
        },
        { measure: false },
      );
      publishImageCache(this.store, temp, key, manifest);
      const evicted = evictImageCache(this.store);
      if (evicted.length > 0) this.inputs.progress(`image cache: evicted ${evicted.length} least recently used entr${evicted.length === 1 ? 'y' : 'ies'}`);
    } catch (err) {
      fs.rmSync(temp, { recursive: true, force: true });
      throw err;
    }
  }
}
