/**
 * What the user named as IMAGE: a file on the host that shoal carries into the guest
 * (`docker-archive:PATH`, `oci-archive:PATH`, podman's transport syntax), or a registry
 * reference the guest's podman pulls.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ShoalError } from '../util/errors';

export type ImageSource =
  | { kind: 'archive'; format: 'docker-archive' | 'oci-archive'; path: string; size: number }
  | { kind: 'registry'; reference: string };

// A registry reference: [host[:port]/]path[:tag][@digest], lower-case path components.
const REFERENCE = /^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?\/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:\/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$/;

export function parseImage(image: string): ImageSource {
  const archive = /^(docker-archive|oci-archive):(.+)$/.exec(image);
  if (archive) {
    const format = archive[1] as 'docker-archive' | 'oci-archive';
    // podman allows a trailing :reference after the path; shoal takes the path as given.
    const file = path.resolve(archive[2]!);
    let stat: fs.Stats;
    try {
      stat = fs.statSync(file);
    } catch {
      throw new ShoalError(`image file not found: ${file}`);
    }
    if (!stat.isFile()) throw new ShoalError(`image file is not a regular file: ${file}`);
    return { kind: 'archive', format, path: file, size: stat.size };
  }
  if (/^[a-z-]+:(?!\d)/.test(image) && !image.includes('/')) {
    throw new ShoalError(`unsupported image transport in "${image}": use a registry reference, docker-archive:PATH or oci-archive:PATH`);
  }
  if (!REFERENCE.test(image)) throw new ShoalError(`invalid image reference: "${image}"`);
  return { kind: 'registry', reference: image };
}

/** The image a VM runs: as the CLI parsed it, or (a record of an older shoal) parsed here. */
export function imageSourceOf(config: { image: string; source?: ImageSource | undefined }): ImageSource {
  return config.source ?? parseImage(config.image);
}

/** Finds the image reference in `podman load` output ("Loaded image: ref" / "Loaded image(s): a,b"). */
export function loadedImageFrom(output: string): string | undefined {
  const match = /Loaded image(?:\(s\))?:\s*(\S+)/.exec(output);
  return match?.[1]?.split(',')[0];
}
