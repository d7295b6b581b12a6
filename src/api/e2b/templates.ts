/**
 * E2B templates on shoal: an alias the operator names (`shoal serve --template NAME=IMAGE`) or a
 * snapshot tag. Every sandbox is a clone of a snapshot: an alias's first create boots its image
 * once (the idle command), snapshots the idle VM under the reserved tag `e2b-template-NAME` and
 * removes that VM; this and every later create restores the snapshot (a second or two instead
 * of a boot). A template snapshot of another image (the operator changed the flag) is rebuilt.
 */
import crypto from 'node:crypto';
import type { Core, SnapshotView } from '../core';
import { E2bApiError, e2bErrorOf, notFound } from './errors';

/** Snapshot tags shoal keeps for the E2B API itself; never offered as user snapshots. */
export const TEMPLATE_TAG_PREFIX = 'e2b-template-';
export const PAUSED_TAG_PREFIX = 'e2b-paused-';
export const isReservedTag = (tag: string): boolean => tag.startsWith(TEMPLATE_TAG_PREFIX) || tag.startsWith(PAUSED_TAG_PREFIX);

/** The template VM's size: every sandbox of the template is a clone, so it is theirs too. */
export const TEMPLATE_CPUS = 1;
export const TEMPLATE_MEMORY_MIB = 512;
/** The template VM's command: it idles, the sandbox's work comes through envd (as server.ts' IDLE_COMMAND). */
const IDLE_COMMAND = ['sleep', '2147483647'];

export interface ResolvedTemplate {
  /** The snapshot a new sandbox is a clone of. */
  snapshotTag: string;
  /** What the sandbox reports as its templateID. */
  templateId: string;
  alias?: string;
}

export class Templates {
  private readonly building = new Map<string, Promise<string>>();

  /** aliases: NAME -> image reference, validated by the caller (serve's flag parser). */
  constructor(private readonly core: Core, readonly aliases: ReadonlyMap<string, string>) {}

  async resolve(templateId: string): Promise<ResolvedTemplate> {
    if (this.aliases.has(templateId)) return { snapshotTag: await this.ensure(templateId), templateId, alias: templateId };
    if (!isReservedTag(templateId) && this.core.snapshots().some((s) => s.tag === templateId)) return { snapshotTag: templateId, templateId };
    if (templateId === 'base') throw notFound("template 'base' (the SDK's default) is not configured: start shoal serve with --template base=IMAGE, or create from a configured template or a snapshot");
    throw notFound(`template '${templateId}' not found: neither a --template alias of this server nor a snapshot`);
  }

  /** The alias's snapshot, built once (concurrent first creates share one build). */
  ensure(alias: string): Promise<string> {
    const image = this.aliases.get(alias)!;
    const tag = `${TEMPLATE_TAG_PREFIX}${alias}`;
    const existing = this.core.snapshots().find((s) => s.tag === tag);
    if (existing && existing.image === image) return Promise.resolve(tag);
    let build = this.building.get(alias);
    if (!build) {
      build = this.build(tag, image, existing).finally(() => this.building.delete(alias));
      this.building.set(alias, build);
    }
    return build;
  }

  private async build(tag: string, image: string, stale: SnapshotView | undefined): Promise<string> {
    if (stale) this.core.removeSnapshot(tag, { force: true });
    try {
      return await this.boot(tag, image);
    } catch (err) {
      // The operator's image or the host, not the request: E2B's "try later" status.
      throw new E2bApiError(503, `template ${tag.slice(TEMPLATE_TAG_PREFIX.length)} (${image}) could not be built: ${e2bErrorOf(err).message}`);
    }
  }

  private async boot(tag: string, image: string): Promise<string> {
    const vm = await this.core.create({
      name: `${tag.slice(0, 40)}-${crypto.randomBytes(4).toString('hex')}`,
      image,
      cpus: TEMPLATE_CPUS,
      memoryMiB: TEMPLATE_MEMORY_MIB,
      env: {},
      cmd: IDLE_COMMAND,
      network: 'rootless',
      publish: [],
    });
    try {
      await this.core.snapshot(vm.id, tag);
    } finally {
      await this.core.remove(vm.id).catch(() => undefined);
    }
    return tag;
  }

  /** The snapshot tag of a template, if it was built. */
  builtSnapshot(alias: string): SnapshotView | undefined {
    return this.core.snapshots().find((s) => s.tag === `${TEMPLATE_TAG_PREFIX}${alias}`);
  }
}
