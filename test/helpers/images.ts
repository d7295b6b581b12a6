/**
 * Test container images, built locally (no registry): a busybox-static root in a
 * docker-archive or oci-archive file.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import * as tar from 'tar';

const BUSYBOX = '/bin/busybox';

/** Applets the tests use, linked to busybox in /bin. */
const APPLETS = ['sh', 'echo', 'cat', 'printf', 'sleep', 'env', 'nproc', 'free', 'head', 'dd', 'wc', 'kill', 'ls', 'true', 'false', 'od', 'sha256sum', 'tr', 'yes', 'id', 'hostname', 'uname', 'grep', 'cut', 'awk', 'seq', 'date', 'mount', 'df', 'ps', 'touch', 'rm', 'mkdir', 'stat', 'wget', 'httpd', 'nc', 'vi', 'less', 'top', 'stty'];

function sha256(data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

async function busyboxLayer(): Promise<Buffer> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-img-'));
  try {
    fs.mkdirSync(path.join(root, 'bin'));
    fs.mkdirSync(path.join(root, 'tmp'), { mode: 0o1777 });
    for (const dir of ['etc', 'root', 'proc', 'sys', 'dev', 'var']) fs.mkdirSync(path.join(root, dir));
    fs.copyFileSync(BUSYBOX, path.join(root, 'bin', 'busybox'));
    fs.chmodSync(path.join(root, 'bin', 'busybox'), 0o755);
    for (const applet of APPLETS) fs.symlinkSync('busybox', path.join(root, 'bin', applet));
    fs.writeFileSync(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    fs.writeFileSync(path.join(root, 'etc', 'group'), 'root:x:0:\n');
    const chunks: Buffer[] = [];
    const stream = tar.create({ cwd: root, portable: true, mtime: new Date(0) } as tar.TarOptionsWithAliasesAsyncNoFile, ['.']);
    for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(Buffer.from(chunk));
    return Buffer.concat(chunks);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

function imageConfig(diffId: string, cmd: string[]): Buffer {
  return Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/bin'], Cmd: cmd, WorkingDir: '/' },
      rootfs: { type: 'layers', diff_ids: [`sha256:${diffId}`] },
      history: [{ created_by: 'shoal test image' }],
    }),
  );
}

/** Writes a tar of named in-memory files. */
async function writeTar(file: string, entries: Array<{ name: string; data: Buffer }>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-arc-'));
  try {
    for (const entry of entries) {
      fs.mkdirSync(path.dirname(path.join(dir, entry.name)), { recursive: true });
      fs.writeFileSync(path.join(dir, entry.name), entry.data);
    }
    await tar.create({ cwd: dir, file, portable: true } as tar.TarOptionsWithAliasesAsyncFile, entries.map((e) => e.name));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** A docker-archive (docker save format) of busybox, tagged `tag`. */
export async function buildBusyboxDockerArchive(file: string, tag = 'localhost/shoal-test:latest', cmd = ['sh']): Promise<string> {
  const layer = await busyboxLayer();
  const diffId = sha256(layer);
  const config = imageConfig(diffId, cmd);
  const configName = `${sha256(config)}.json`;
  const manifest = Buffer.from(JSON.stringify([{ Config: configName, RepoTags: [tag], Layers: [`${diffId}/layer.tar`] }]));
  await writeTar(file, [
    { name: `${diffId}/layer.tar`, data: layer },
    { name: configName, data: config },
    { name: 'manifest.json', data: manifest },
  ]);
  return file;
}

/** An OCI image layout archive of busybox (oci-archive). */
export async function buildBusyboxOciArchive(file: string, tag = 'latest', cmd = ['sh']): Promise<string> {
  const layer = await busyboxLayer();
  const diffId = sha256(layer);
  const config = imageConfig(diffId, cmd);
  const configDigest = sha256(config);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${configDigest}`, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: `sha256:${diffId}`, size: layer.length }],
    }),
  );
  const manifestDigest = sha256(manifest);
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${manifestDigest}`, size: manifest.length, annotations: { 'org.opencontainers.image.ref.name': tag } }],
    }),
  );
  await writeTar(file, [
    { name: 'oci-layout', data: Buffer.from('{"imageLayoutVersion":"1.0.0"}') },
    { name: 'index.json', data: index },
    { name: `blobs/sha256/${diffId}`, data: layer },
    { name: `blobs/sha256/${configDigest}`, data: config },
    { name: `blobs/sha256/${manifestDigest}`, data: manifest },
  ]);
  return file;
}

/**
 * The busybox docker-archive a test file runs, in a temporary directory of its own: built in the
 * file's `before`, removed in its `after`. Call it at the top level of the test file.
 */
export function busyboxImageForFile(): { readonly ref: string; readonly file: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-images-'));
  const image = { ref: '', file: path.join(dir, 'busybox.tar') };
  before(async () => {
    image.ref = `docker-archive:${await buildBusyboxDockerArchive(image.file)}`;
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return image;
}
