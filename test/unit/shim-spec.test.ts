/** The shim's inputs from containerd: its Go-style flags and the bundle's OCI spec, validated where they enter. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseShimArgs } from '../../src/shim/main';
import { containerOptionsOf, parseBundleSpec, parseProcessSpec } from '../../src/shim/oci-spec';
import { vmNameFor } from '../../src/shim/vm';

test('flags as containerd 1.6 writes them', () => {
  const args = parseShimArgs(['-namespace', 'k8s.io', '-address', '/run/c.sock', '-publish-binary', '/usr/bin/containerd', '-id', 'abc', '-debug', 'start']);
  assert.equal(args.action, 'start');
  assert.deepEqual(args.flags, { namespace: 'k8s.io', address: '/run/c.sock', 'publish-binary': '/usr/bin/containerd', id: 'abc', debug: 'true' });
  assert.equal(parseShimArgs(['--id=x', '-bundle', '/b', 'delete']).flags.bundle, '/b');
  assert.throws(() => parseShimArgs(['-nope', 'x', 'start']), /unknown flag/);
  assert.throws(() => parseShimArgs(['-id']), /needs a value/);
});

test('config.json: args, env, cwd, user, terminal, read-only root, resources', () => {
  const spec = parseBundleSpec({
    process: { args: ['sh', '-c', 'x'], env: ['PATH=/bin', 'A=b=c'], cwd: '/w', user: { uid: 1000, gid: 100 }, terminal: true },
    root: { path: 'rootfs', readonly: true },
    hostname: 'pod1',
    annotations: { 'io.kubernetes.cri.sandbox-id': 's1', n: 3 },
    linux: { resources: { memory: { limit: 512 * 1024 * 1024 }, cpu: { quota: 150000, period: 100000 } } },
  });
  assert.deepEqual(spec.process, { args: ['sh', '-c', 'x'], env: { PATH: '/bin', A: 'b=c' }, cwd: '/w', user: '1000:100', terminal: true });
  assert.equal(spec.memoryMiB, 512);
  assert.equal(spec.cpus, 2);
  assert.deepEqual(spec.annotations, { 'io.kubernetes.cri.sandbox-id': 's1' });
  assert.deepEqual(containerOptionsOf(spec), { user: '1000:100', workdir: '/w', hostname: 'pod1', readOnly: true });
});

test('config.json from CRI: the sandbox (its network namespace) and a pod\'s container', () => {
  const sandbox = parseBundleSpec({
    process: { args: ['/pause'] },
    annotations: { 'io.kubernetes.cri.container-type': 'sandbox', 'io.kubernetes.cri.sandbox-id': 'p1' },
    linux: { namespaces: [{ type: 'pid' }, { type: 'network', path: '/var/run/netns/cni-1234' }] },
  });
  assert.equal(sandbox.criType, 'sandbox');
  assert.equal(sandbox.sandboxId, 'p1');
  assert.equal(sandbox.netnsPath, '/var/run/netns/cni-1234');
  const app = parseBundleSpec({
    process: { args: ['httpd'] },
    annotations: { 'io.kubernetes.cri.container-type': 'container', 'io.kubernetes.cri.sandbox-id': 'p1' },
    linux: { namespaces: [{ type: 'network', path: '/proc/42/ns/net' }] },
  });
  assert.equal(app.criType, 'container');
  assert.equal(app.sandboxId, 'p1');
  const plain = parseBundleSpec({ process: { args: ['sh'] } });
  assert.equal(plain.criType, undefined);
  assert.equal(plain.netnsPath, undefined);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'] }, annotations: { 'io.kubernetes.cri.container-type': 'podlet', 'io.kubernetes.cri.sandbox-id': 'p1' } }), /unknown io.kubernetes.cri.container-type/);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'] }, annotations: { 'io.kubernetes.cri.container-type': 'container' } }), /needs a valid io.kubernetes.cri.sandbox-id/);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'] }, annotations: { 'io.kubernetes.cri.container-type': 'container', 'io.kubernetes.cri.sandbox-id': '../x' } }), /needs a valid/);
});

test('config.json: shoal.dev/restore-from names a snapshot for a pod\'s sandbox only', () => {
  const sandbox = (restoreFrom: string, type = 'sandbox') => parseBundleSpec({
    process: { args: ['/pause'] },
    annotations: { 'io.kubernetes.cri.container-type': type, 'io.kubernetes.cri.sandbox-id': 'p1', 'shoal.dev/restore-from': restoreFrom },
  });
  assert.equal(sandbox('pod-snap').restoreFrom, 'pod-snap');
  assert.equal(parseBundleSpec({ process: { args: ['x'] } }).restoreFrom, undefined);
  assert.throws(() => sandbox('pod-snap', 'container'), /shoal.dev\/restore-from is a pod annotation/);
  for (const bad of ['../x', '', 'a b', 'x'.repeat(200)]) assert.throws(() => sandbox(bad), /must be a snapshot tag/, bad);
});

test('config.json: the bounding capabilities are exactly the container\'s; an unknown one is refused', () => {
  const spec = parseBundleSpec({ process: { args: ['x'], capabilities: { bounding: ['CAP_CHOWN', 'CAP_NET_RAW', 'CAP_CHOWN'], effective: ['CAP_CHOWN'] } } });
  assert.deepEqual(spec.capabilities, ['CHOWN', 'NET_RAW']);
  assert.deepEqual(containerOptionsOf(spec), { user: '0:0', workdir: '/', capDrop: ['ALL'], capAdd: ['CHOWN', 'NET_RAW'] });
  assert.deepEqual(containerOptionsOf(parseBundleSpec({ process: { args: ['x'], capabilities: { bounding: [] } } })), { user: '0:0', workdir: '/', capDrop: ['ALL'], capAdd: [] });
  assert.equal(parseBundleSpec({ process: { args: ['x'] } }).capabilities, undefined);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'], capabilities: { bounding: ['CAP_FLY'] } } }), /unknown capability "CAP_FLY"/);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'], capabilities: { bounding: 'CAP_CHOWN' } } }), /must be a list/);
});

test('config.json: rlimits become podman ulimits, tmpfs mounts podman tmpfs; host binds are named, not applied', () => {
  const spec = parseBundleSpec({
    process: { args: ['x'], rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 512 }, { type: 'RLIMIT_CORE', hard: 18446744073709551615, soft: 0 }] },
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc' },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'size=65536k'] },
      { destination: '/run', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/scratch', type: 'tmpfs', source: 'tmpfs' },
      { destination: '/etc/hosts', type: 'bind', source: '/var/lib/containerd/sandboxes/p1/hosts', options: ['rbind', 'rw'] },
    ],
  });
  assert.deepEqual(spec.ulimits, ['nofile=512:1024', 'core=0:-1']);
  assert.deepEqual(spec.tmpfs, ['/run:nosuid,mode=755,size=65536k', '/scratch']);
  assert.deepEqual(spec.ignoredMounts, ['/etc/hosts (bind from /var/lib/containerd/sandboxes/p1/hosts)']);
  const options = containerOptionsOf(spec);
  assert.deepEqual(options.ulimits, ['nofile=512:1024', 'core=0:-1']);
  assert.deepEqual(options.tmpfs, ['/run:nosuid,mode=755,size=65536k', '/scratch']);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'] }, mounts: [{ destination: '/t', type: 'tmpfs', options: ['nr_inodes=5'] }] }), /tmpfs option "nr_inodes=5" for \/t is not supported/);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'], rlimits: [{ type: 'RLIMIT_WINGS', hard: 1, soft: 1 }] } }), /unknown rlimit "RLIMIT_WINGS"/);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'], rlimits: [{ type: 'RLIMIT_NOFILE', hard: -1, soft: 1 }] } }), /non-negative integer/);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'] }, mounts: [{ destination: '/t', type: 'tmpfs', options: ['size=1m,exec'] }] }), /tmpfs option "size=1m,exec" for \/t is not supported/);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'] }, mounts: [{ destination: 'rel', type: 'tmpfs' }] }), /absolute destination/);
  assert.throws(() => parseBundleSpec({ process: { args: ['x'] }, mounts: [{ destination: '/a:b', type: 'tmpfs' }] }), /absolute destination/);
});

test('config.json: malformed input is one clear error', () => {
  assert.throws(() => parseBundleSpec([]), /not an object/);
  assert.throws(() => parseBundleSpec({ process: { args: [] } }), /args/);
  assert.throws(() => parseProcessSpec({ args: ['a'], env: ['1X=y'] }, 'p'), /invalid environment variable/);
  assert.throws(() => parseProcessSpec({ args: ['a'], cwd: 'rel' }, 'p'), /cwd/);
  assert.throws(() => parseProcessSpec({ args: ['a'], user: { uid: -1 } }, 'p'), /uid/);
  assert.throws(() => parseBundleSpec({ process: { args: ['a'] }, hostname: 'bad host' }), /hostname/);
});

test('VM names: readable, valid, bounded', () => {
  assert.equal(vmNameFor('shoaltest', 't-run'), 'ctr-shoaltest-t-run');
  const long = vmNameFor('k8s.io', 'a'.repeat(64));
  assert.ok(long.length <= 63 && /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(long));
  assert.notEqual(vmNameFor('k8s.io', `${'a'.repeat(64)}1`), vmNameFor('k8s.io', `${'a'.repeat(64)}2`));
});
