/**
 * Writes a busybox docker-archive (or, with --oci, an oci-archive) to the given path: a local
 * image for trying shoal without a registry.
 */
import { buildBusyboxDockerArchive, buildBusyboxOciArchive } from '../test/helpers/images';

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const oci = args.includes('--oci');
  const file = args.find((a) => !a.startsWith('--'));
  if (!file) {
    process.stderr.write('usage: make-test-image [--oci] FILE\n');
    process.exit(2);
  }
  await (oci ? buildBusyboxOciArchive(file) : buildBusyboxDockerArchive(file));
  process.stdout.write(`${oci ? 'oci-archive' : 'docker-archive'}:${file}\n`);
}

void main();
