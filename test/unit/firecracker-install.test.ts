/**
 * `shoal setup --vmm firecracker`: OUR download + verify + extract code,
 * against a local HTTP server on 127.0.0.1 serving a fake release archive
 * laid out like the official one. (This does not test Firecracker.)
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ShoalError } from '../../src/util/errors';
import { FIRECRACKER_VERSION, installFirecracker, installedPaths, parseChecksumFile, releaseArch, releaseInfo, type Progress } from '../../src/vmm/firecracker/install';

let dir: string;
let server: http.Server;
let baseUrl: string;
const served: string[] = [];
let archive: Buffer;
let checksumText = '';
let redirect = false;

const info = releaseInfo(FIRECRACKER_VERSION, 'x86_64');

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fci-'));
  // Build an archive with the official layout: release-<v>-<arch>/{firecracker,jailer}-<v>-<arch>
  const stage = path.join(dir, 'stage');
  const rel = path.join(stage, `release-${FIRECRACKER_VERSION}-x86_64`);
  fs.mkdirSync(rel, { recursive: true });
  fs.writeFileSync(path.join(rel, `firecracker-${FIRECRACKER_VERSION}-x86_64`), '#!/bin/sh\necho "Firecracker v1.16.1"\n', { mode: 0o755 });
  fs.writeFileSync(path.join(rel, `jailer-${FIRECRACKER_VERSION}-x86_64`), '#!/bin/sh\necho jailer\n', { mode: 0o755 });
  fs.writeFileSync(path.join(rel, 'SHA256SUMS'), 'irrelevant\n');
  const tgz = path.join(dir, info.archiveName);
  execFileSync('tar', ['-czf', tgz, '-C', stage, `release-${FIRECRACKER_VERSION}-x86_64`]);
  archive = fs.readFileSync(tgz);
  checksumText = `${crypto.createHash('sha256').update(archive).digest('hex')}  ${info.archiveName}\n`;

  server = http.createServer((req, res) => {
    served.push(req.url ?? '');
    const url = req.url ?? '';
    if (redirect && !url.startsWith('/objects/')) {
      res.writeHead(302, { Location: `/objects${url}` });
      res.end();
      return;
    }
    const p = url.replace(/^\/objects/, '');
    if (p === `/${FIRECRACKER_VERSION}/${info.archiveName}`) {
      res.writeHead(200, { 'Content-Length': archive.length });
      res.end(archive);
    } else if (p === `/${FIRECRACKER_VERSION}/${info.archiveName}.sha256.txt`) {
      res.writeHead(200);
      res.end(checksumText);
    } else {
      res.writeHead(404);
      res.end('Not Found');
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => {
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('firecracker install: release naming', () => {
  it('pins v1.16.1 and names the official archive, checksum and members', () => {
    assert.equal(FIRECRACKER_VERSION, 'v1.16.1');
    const r = releaseInfo(undefined, 'x86_64');
    assert.equal(r.archiveUrl, 'https://github.com/firecracker-microvm/firecracker/releases/download/v1.16.1/firecracker-v1.16.1-x86_64.tgz');
    assert.equal(r.checksumUrl, 'https://github.com/firecracker-microvm/firecracker/releases/download/v1.16.1/firecracker-v1.16.1-x86_64.tgz.sha256.txt');
    assert.equal(r.firecrackerMember, 'release-v1.16.1-x86_64/firecracker-v1.16.1-x86_64');
    assert.equal(releaseInfo(undefined, 'aarch64').firecrackerMember, 'release-v1.16.1-aarch64/firecracker-v1.16.1-aarch64');
    assert.equal(releaseArch('x64'), 'x86_64');
    assert.equal(releaseArch('arm64'), 'aarch64');
    assert.throws(() => releaseArch('riscv64'), /x86_64 and aarch64 only/);
  });

  it('parses sha256sum-style checksum files', () => {
    const h = 'a'.repeat(64);
    assert.equal(parseChecksumFile(`${h}  firecracker-v1.16.1-x86_64.tgz\n`, 'firecracker-v1.16.1-x86_64.tgz'), h);
    assert.equal(parseChecksumFile(`${h.toUpperCase()} *./firecracker-v1.16.1-x86_64.tgz`, 'firecracker-v1.16.1-x86_64.tgz'), h);
    assert.equal(parseChecksumFile(h, 'x.tgz'), h);
    assert.throws(() => parseChecksumFile(`${h}  other.tgz\n`, 'x.tgz'), /no sha256 for x\.tgz/);
  });
});

describe('firecracker install: download, verify, extract', () => {
  it('downloads with progress, verifies sha256 and installs firecracker + jailer into the cache', async () => {
    const cache = path.join(dir, 'cache1');
    const progress: Progress[] = [];
    const r = await installFirecracker({ cacheDir: cache, arch: 'x86_64', baseUrl, onProgress: (p) => progress.push(p) });
    assert.equal(r.source, 'download');
    assert.equal(r.firecracker, installedPaths(FIRECRACKER_VERSION, 'x86_64', cache).firecracker);
    assert.equal(r.archiveSha256, crypto.createHash('sha256').update(archive).digest('hex'));
    assert.equal(execFileSync(r.firecracker).toString().trim(), 'Firecracker v1.16.1');
    assert.ok(r.jailer && fs.existsSync(r.jailer));
    assert.ok(progress.length > 0 && progress.at(-1)!.received === archive.length && progress.at(-1)!.total === archive.length);
    // Second run: cached, no network.
    const before = served.length;
    const again = await installFirecracker({ cacheDir: cache, arch: 'x86_64', baseUrl });
    assert.equal(again.source, 'cached');
    assert.equal(served.length, before);
  });

  it('follows redirects (GitHub serves release assets through one)', async () => {
    redirect = true;
    try {
      const r = await installFirecracker({ cacheDir: path.join(dir, 'cache-redirect'), arch: 'x86_64', baseUrl });
      assert.equal(r.source, 'download');
    } finally {
      redirect = false;
    }
  });

  it('refuses an archive whose sha256 does not match, installing nothing', async () => {
    const good = checksumText;
    checksumText = `${'0'.repeat(64)}  ${info.archiveName}\n`;
    const cache = path.join(dir, 'cache2');
    try {
      await assert.rejects(installFirecracker({ cacheDir: cache, arch: 'x86_64', baseUrl }), (e: unknown) => {
        assert.ok(e instanceof ShoalError);
        assert.match(e.message, /^Checksum mismatch for firecracker-v1\.16\.1-x86_64\.tgz: expected sha256 0{64}, got [0-9a-f]{64}/);
        return true;
      });
      assert.ok(!fs.existsSync(installedPaths(FIRECRACKER_VERSION, 'x86_64', cache).firecracker));
    } finally {
      checksumText = good;
    }
  });

  it('offline: fails with one line saying what to download and where to put it', async () => {
    // A port nothing listens on stands in for "no route to github.com".
    const dead = http.createServer();
    await new Promise<void>((r) => dead.listen(0, '127.0.0.1', () => r()));
    const port = (dead.address() as AddressInfo).port;
    await new Promise<void>((r) => dead.close(() => r()));
    const cache = path.join(dir, 'cache3');
    const dest = installedPaths(FIRECRACKER_VERSION, 'x86_64', cache).firecracker;
    await assert.rejects(installFirecracker({ cacheDir: cache, arch: 'x86_64', baseUrl: `http://127.0.0.1:${port}` }), (e: unknown) => {
      assert.ok(e instanceof ShoalError);
      assert.ok(!e.message.includes('\n'), 'one line');
      assert.match(e.message, /^Cannot download Firecracker v1\.16\.1 \(ECONNREFUSED\)\. Download http:\/\/127\.0\.0\.1:\d+\/v1\.16\.1\/firecracker-v1\.16\.1-x86_64\.tgz/);
      assert.ok(e.message.includes(`extract release-v1.16.1-x86_64/firecracker-v1.16.1-x86_64 and put it at ${dest}`));
      assert.match(e.message, /--firecracker PATH/);
      return true;
    });
    // The default URL is GitHub's.
    assert.match(releaseInfo().archiveUrl, /^https:\/\/github\.com\/firecracker-microvm\/firecracker\/releases\/download\/v1\.16\.1\//);
  });

  it('a missing release (404) is reported the same way', async () => {
    await assert.rejects(installFirecracker({ cacheDir: path.join(dir, 'cache4'), arch: 'x86_64', version: 'v9.9.9', baseUrl }), /^ShoalError: Cannot download Firecracker v9\.9\.9 \(HTTP 404 for .*\)\. Download /);
  });

  it('--firecracker PATH adopts a local binary', async () => {
    const local = path.join(dir, 'my-firecracker');
    fs.writeFileSync(local, '#!/bin/sh\necho mine\n', { mode: 0o755 });
    const cache = path.join(dir, 'cache5');
    const r = await installFirecracker({ cacheDir: cache, arch: 'x86_64', fromPath: local });
    assert.equal(r.source, 'local');
    assert.equal(execFileSync(r.firecracker).toString().trim(), 'mine');
    fs.writeFileSync(path.join(dir, 'not-exec'), 'x', { mode: 0o644 });
    await assert.rejects(installFirecracker({ cacheDir: cache, arch: 'x86_64', fromPath: path.join(dir, 'not-exec') }), /not an executable file/);
  });
});
