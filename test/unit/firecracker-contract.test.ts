/**
 * Contract tests: every request body the Firecracker builders can emit, for
 * every configuration the CLI allows, validated against Firecracker's own
 * OpenAPI spec (v1.16.1) with additionalProperties:false everywhere.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DriveSpec, NetSpec, RestoreSpec, SnapshotKind, VmSpec } from '../../src/vmm/backend';
import * as R from '../../src/vmm/firecracker/requests';
import { loadSpecJudge, specVersion, toJsonSchema } from '../helpers/firecracker-spec';

const judge = loadSpecJudge();
const covered = new Set<string>();
let validated = 0;

function check(req: R.ApiRequest, label: string): void {
  const problems = judge.checkRequest(req.method, req.path, req.body);
  assert.deepEqual(problems, [], `${label}: ${req.method} ${req.path} ${JSON.stringify(req.body)}`);
  const m = judge.matchPath(req.path);
  covered.add(`${req.method} ${m!.template}`);
  validated++;
}

const ROOTFS: DriveSpec = { id: 'vda', path: '/var/cache/shoal/rootfs.ext4', readOnly: true };
const SCRATCH: DriveSpec = { id: 'vdb', path: '/var/lib/shoal/vms/0123456789ab/scratch.img', readOnly: false };
const DRIVE_SETS: DriveSpec[][] = [[ROOTFS, SCRATCH], [ROOTFS], [{ ...SCRATCH, id: 'data' }, SCRATCH]];
const NETS: Array<NetSpec | undefined> = [undefined, { tap: 'shoaltap0', mac: '02:fc:00:00:00:01' }];
const MEMORIES = [128, 512, 2048];

function vmSpec(over: Partial<VmSpec> = {}): VmSpec {
  return {
    id: '0123456789ab',
    runDir: '/run/shoal/0123456789ab',
    kernel: '/var/cache/shoal/vmlinux',
    initrd: '/var/cache/shoal/initramfs.cpio.gz',
    cmdline: 'console=ttyS0 reboot=k panic=1 shoal.transport=vsock',
    cpus: 2,
    memoryMiB: 512,
    drives: [ROOTFS, SCRATCH],
    accel: 'kvm',
    consoleLog: '/var/lib/shoal/vms/0123456789ab/console.log',
    ...over,
  };
}

describe('firecracker contract: spec loading', () => {
  it(`loads firecracker.yaml ${specVersion()} and closes every object schema`, () => {
    assert.equal(specVersion(), '1.16.1');
    let objects = 0;
    const walk = (n: unknown): void => {
      if (Array.isArray(n)) return n.forEach(walk);
      if (!n || typeof n !== 'object') return;
      const o = n as Record<string, unknown>;
      if (o.type === 'object' || o.properties) {
        objects++;
        assert.ok(o.additionalProperties === false || o.additionalProperties === true, `object without additionalProperties: ${JSON.stringify(o).slice(0, 80)}`);
      }
      Object.values(o).forEach(walk);
    };
    for (const def of Object.values(judge.spec.definitions)) walk(toJsonSchema(def as never));
    assert.ok(objects > 30, `only ${objects} object schemas`);
  });

  it('rejects a field the spec lacks, a missing required field, a bad enum, out-of-range numbers, unknown paths and methods', () => {
    const good = R.drive(ROOTFS);
    assert.deepEqual(judge.checkRequest(good.method, good.path, good.body), []);
    const extra = { ...good.body, bogus: true };
    assert.match(judge.checkRequest('PUT', '/drives/vda', extra).join(), /additional properties \(bogus\)/);
    // Nested objects are closed too.
    const load = { snapshot_path: '/s', mem_backend: { backend_type: 'File', backend_path: '/m', extra: 1 } };
    assert.match(judge.checkRequest('PUT', '/snapshot/load', load).join(), /additional properties \(extra\)/);
    assert.match(judge.checkRequest('PUT', '/snapshot/load', { ...load, vsock_override: { uds_path: '/v', cid: 4 } }).join(), /additional properties \(cid\)/);
    const { is_root_device: _omit, ...missing } = good.body!;
    assert.match(judge.checkRequest('PUT', '/drives/vda', missing).join(), /must have required property 'is_root_device'/);
    assert.match(judge.checkRequest('PUT', '/drives/vda', { ...good.body, cache_type: 'WriteThrough' }).join(), /must be equal to one of the allowed values/);
    assert.match(judge.checkRequest('PUT', '/machine-config', { vcpu_count: 33, mem_size_mib: 128 }).join(), /must be <= 32/);
    assert.match(judge.checkRequest('PUT', '/machine-config', { vcpu_count: 0, mem_size_mib: 128 }).join(), /must be >= 1/);
    assert.match(judge.checkRequest('PUT', '/vsock', { guest_cid: 2, uds_path: '/v' }).join(), /must be >= 3/);
    assert.match(judge.checkRequest('PUT', '/drives/vdb', good.body).join(), /path drive_id=vdb but body says vda/);
    assert.match(judge.checkRequest('PUT', '/drives/root-1', { ...good.body, drive_id: 'root-1' }).join(), /drive_id "root-1" is not alphanumeric\/_/);
    assert.match(judge.checkRequest('PATCH', '/network-interfaces/eth-0', { iface_id: 'eth-0' }).join(), /iface_id "eth-0" is not alphanumeric\/_/);
    assert.match(judge.checkRequest('PUT', '/snapshot/load', { snapshot_path: '/s' }).join(), /exactly one of mem_file_path and mem_backend/);
    assert.match(judge.checkRequest('PUT', '/no-such-thing', {}).join(), /not in the spec/);
    assert.match(judge.checkRequest('PATCH', '/boot-source', {}).join(), /PATCH \/boot-source is not in the spec/);
    assert.match(judge.checkRequest('PUT', '/actions', { action_type: 'Reboot' }).join(), /allowed values/);
  });

  it('would catch a builder that sends a field the spec lacks', () => {
    // The same check() the enumeration uses, applied to a builder output with one extra key.
    const req = R.snapshotCreate({ stateFile: '/s', memoryFile: '/m' }, 'full');
    const tampered = { ...req, body: { ...req.body, version: '1.0.0' } }; // removed from the API in 1.5
    assert.throws(() => check(tampered, 'tampered'), /additional properties \(version\)/);
  });
});

describe('firecracker contract: boot bodies', () => {
  it('every boot sequence for every CLI configuration validates', (t) => {
    let configs = 0;
    const before = validated;
    for (let cpus = 1; cpus <= R.MAX_VCPUS; cpus++) {
      for (const memoryMiB of MEMORIES) {
      for (const drives of DRIVE_SETS) {
        for (const net of NETS) {
          for (const initrd of [true, false]) {
            for (const trackDirtyPages of [false, true]) {
              for (const logMetrics of [false, true]) {
                for (const entropy of [true, false]) {
                  for (const mmds of net ? [false, true] : [false]) {
                    const spec = vmSpec({ cpus, memoryMiB, drives, net, initrd: initrd ? '/var/cache/shoal/initramfs.cpio.gz' : undefined });
                    const reqs = R.bootSequence(spec, {
                      vsockPath: R.runFiles(spec.runDir).vsock,
                      logPath: logMetrics ? '/run/shoal/x/firecracker.log' : undefined,
                      metricsPath: logMetrics ? '/run/shoal/x/firecracker.metrics' : undefined,
                      logLevel: 'Info',
                      trackDirtyPages,
                      entropy,
                      mmds,
                    });
                    const label = `cpus=${cpus} mem=${memoryMiB} drives=${drives.length} net=${!!net} initrd=${initrd} dirty=${trackDirtyPages} log=${logMetrics} rng=${entropy} mmds=${mmds}`;
                    for (const r of reqs) check(r, label);
                    assert.equal(reqs.at(-1)!.path, '/actions');
                    assert.deepEqual(reqs.at(-1)!.body, { action_type: 'InstanceStart' });
                    // Exactly the root-device rule: none with an initramfs, the first drive without one.
                    const roots = reqs.filter((r) => r.path.startsWith('/drives/') && (r.body as R.DriveBody).is_root_device);
                    assert.equal(roots.length, initrd ? 0 : 1, label);
                    configs++;
                  }
                }
              }
            }
          }
        }
      }
      }
    }
    assert.ok(configs > 10_000, `${configs} configurations`);
    t.diagnostic(`boot: ${configs} configurations, ${validated - before} request bodies validated against firecracker.yaml ${specVersion()}`);
  });

  it('refuses what Firecracker cannot do instead of sending it', () => {
    assert.throws(() => R.machineConfig({ cpus: 0, memoryMiB: 128 }), /1 to 32 vCPUs/);
    assert.throws(() => R.machineConfig({ cpus: 33, memoryMiB: 128 }), /1 to 32 vCPUs/);
    assert.throws(() => R.machineConfig({ cpus: 1, memoryMiB: 1.5 }), /whole number/);
    assert.throws(() => R.networkInterface({ mac: '02:00:00:00:00:01', userMode: { forwards: [] } }), /user-mode/);
    assert.throws(() => R.networkInterface({ mac: '02:00:00:00:00:01' }), /TAP/);
    assert.throws(() => R.drive({ id: 'a/b', path: '/x', readOnly: true }), /invalid Firecracker drive id/);
  });
});

describe('firecracker contract: runtime and snapshot bodies', () => {
  it('pause, resume, actions, snapshot create (full/diff), patch drive, logger levels, mmds validate', (t) => {
    const before = validated;
    check(R.pauseVm(), 'pause');
    check(R.resumeVm(), 'resume');
    check(R.instanceStart(), 'start');
    check(R.sendCtrlAltDel(), 'ctrl-alt-del');
    check(R.action('FlushMetrics'), 'flush');
    for (const kind of ['full', 'diff'] as SnapshotKind[]) {
      const r = R.snapshotCreate({ stateFile: '/snap/state', memoryFile: '/snap/mem' }, kind);
      check(r, kind);
      assert.equal(r.body!.snapshot_type, kind === 'full' ? 'Full' : 'Diff');
    }
    for (const d of [ROOTFS, SCRATCH]) check(R.patchDrive(d.id, '/clone/' + d.id), 'patch drive');
    for (const level of ['Error', 'Warning', 'Info', 'Debug', 'Trace', 'Off'] as R.LogLevel[]) check(R.logger('/l', level), `logger ${level}`);
    check(R.metrics('/m'), 'metrics');
    check(R.mmdsConfig(), 'mmds config');
    check(R.mmdsContents({ latest: { 'meta-data': { 'instance-id': '0123456789ab' } } }), 'mmds');
    check(R.getVersion(), 'version');
    check(R.describeInstance(), 'describe');
    check(R.entropy(), 'entropy');
    t.diagnostic(`runtime: ${validated - before} request bodies validated`);
  });

  const VERSIONS = ['1.10.1', '1.11.0', '1.12.0', '1.15.1', '1.16.0', '1.16.1'];

  it('every restore sequence validates, and optional load fields follow the binary version', (t) => {
    let configs = 0;
    let refused = 0;
    const before = validated;
    for (const version of VERSIONS) {
      const v = R.parseVersion(version);
      const feats = R.featuresOf(v);
      for (const memory of ['file', 'uffd'] as const) {
        for (const resume of [true, false, undefined]) {
          for (const net of NETS) {
            for (const newTap of net ? [false, true] : [false]) {
              for (const newVsock of [false, true]) {
                for (const newDisks of [false, true]) {
                  for (const trackDirtyPages of [false, true]) {
                    for (const logMetrics of [false, true]) {
                      const source = vmSpec({ net, runDir: '/run/shoal/aaaaaaaaaaaa' });
                      const spec: RestoreSpec = {
                        id: 'bbbbbbbbbbbb',
                        runDir: newVsock ? '/run/shoal/bbbbbbbbbbbb' : source.runDir,
                        snapshot: { stateFile: '/snap/t/state', memoryFile: '/snap/t/mem' },
                        memory: memory === 'file' ? { kind: 'file', path: '/snap/t/mem' } : { kind: 'uffd', socketPath: '/run/shoal/bbbbbbbbbbbb/uffd.sock' },
                        source,
                        drives: newDisks ? [ROOTFS, { ...SCRATCH, path: '/var/lib/shoal/vms/bbbbbbbbbbbb/scratch.img' }] : source.drives,
                        net: net && (newTap ? { ...net, tap: 'shoaltap1' } : net),
                        consoleLog: '/var/lib/shoal/vms/bbbbbbbbbbbb/console.log',
                        resume,
                      };
                      const opts: R.RestoreOptions = {
                        version: v,
                        vsockPath: R.runFiles(spec.runDir).vsock,
                        sourceVsockPath: R.runFiles(source.runDir).vsock,
                        trackDirtyPages,
                        logPath: logMetrics ? '/l' : undefined,
                        metricsPath: logMetrics ? '/m' : undefined,
                      };
                      const needsNet = newTap && !feats.networkOverrides;
                      const needsVsock = newVsock && !feats.vsockOverride;
                      // Before 1.13.0 the load's field was enable_diff_snapshots (deny_unknown_fields).
                      const needsTracking = trackDirtyPages && !feats.trackDirtyPagesOnLoad;
                      if (needsNet || needsVsock || needsTracking) {
                        assert.throws(() => R.restoreSequence(spec, opts), needsNet ? /needs Firecracker >= 1\.12\.0 \(network_overrides\)/ : needsVsock ? /needs Firecracker >= 1\.16\.0 \(vsock_override\)/ : /needs Firecracker >= 1\.13\.0 \(track_dirty_pages\)/);
                        refused++;
                        continue;
                      }
                      const reqs = R.restoreSequence(spec, opts);
                      const label = `fc=${version} mem=${memory} resume=${resume} net=${!!net} newTap=${newTap} newVsock=${newVsock} newDisks=${newDisks}`;
                      for (const r of reqs) check(r, label);
                      const load = reqs.find((r) => r.path === '/snapshot/load')!.body as R.SnapshotLoadBody;
                      assert.equal(load.mem_backend.backend_type, memory === 'file' ? 'File' : 'Uffd');
                      assert.equal(load.resume_vm, false, 'resume happens after the disk swap');
                      // Overrides only when needed, never to a binary that predates them.
                      assert.equal('network_overrides' in load, newTap, label);
                      assert.equal('vsock_override' in load, newVsock, label);
                      if (!feats.networkOverrides) assert.ok(!('network_overrides' in load));
                      if (!feats.vsockOverride) assert.ok(!('vsock_override' in load));
                      assert.equal(load.track_dirty_pages, trackDirtyPages ? true : undefined, label);
                      assert.equal(reqs.filter((r) => r.method === 'PATCH' && r.path.startsWith('/drives/')).length, newDisks ? 1 : 0);
                      assert.equal(reqs.at(-1)!.path === '/vm', resume !== false, label);
                      // Nothing but logger/metrics may precede the load.
                      const loadAt = reqs.findIndex((r) => r.path === '/snapshot/load');
                      assert.ok(reqs.slice(0, loadAt).every((r) => r.path === '/logger' || r.path === '/metrics'));
                      configs++;
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
    t.diagnostic(`restore: ${configs} configurations validated (${validated - before} bodies), ${refused} refused for an old binary`);
    assert.ok(configs > 500 && refused > 100);
  });

  it('restore refuses changes Firecracker cannot make', () => {
    const source = vmSpec({ net: { tap: 't0', mac: '02:fc:00:00:00:01' } });
    const base: RestoreSpec = {
      id: 'c', runDir: source.runDir, snapshot: { stateFile: '/s', memoryFile: '/m' }, memory: { kind: 'file', path: '/m' },
      source, drives: source.drives, net: source.net, consoleLog: '/c',
    };
    const opts = { version: R.parseVersion('1.16.1'), vsockPath: '/v', sourceVsockPath: '/v' };
    // The MAC is device state that network_overrides cannot change (v1.16.1 NetworkOverride has
    // iface_id and host_dev_name only): a clone asking for its own MAC loads with the snapshot's,
    // and nothing in the body names a MAC (the guest takes the clone's MAC itself).
    const ownMac = R.restoreSequence({ ...base, net: { tap: 't1', mac: '02:fc:00:00:00:02' } }, opts);
    const load = ownMac.find((r) => r.path === '/snapshot/load')!;
    assert.deepEqual((load.body as R.SnapshotLoadBody).network_overrides, [{ iface_id: 'eth0', host_dev_name: 't1' }]);
    assert.ok(!JSON.stringify(ownMac).includes('02:fc:00:00:00:02'));
    // Device ids: alphanumerics and _ only (checked_id); a '-' is refused before Firecracker sees it.
    assert.throws(() => R.drive({ ...ROOTFS, id: 'root-1' }), /letters, digits and _ only/);
    assert.doesNotThrow(() => R.drive({ ...ROOTFS, id: 'root_1' }));
    assert.throws(() => R.restoreSequence({ ...base, drives: [{ ...ROOTFS, id: 'vdz' }] }, opts), /drive vdz is not in the snapshot/);
    assert.throws(() => R.restoreSequence({ ...base, drives: [{ ...ROOTFS, readOnly: false }] }, opts), /read-only and read-write/);
    assert.throws(() => R.restoreSequence({ ...base, source: { ...source, net: undefined } }, opts), /cannot add a network interface/);
  });

  it('parses the versions GET /version reports', () => {
    assert.deepEqual(R.parseVersion('1.16.1'), { major: 1, minor: 16, patch: 1 });
    assert.deepEqual(R.parseVersion('v1.12.0-dev'), { major: 1, minor: 12, patch: 0 });
    assert.ok(R.versionAtLeast(R.parseVersion('2.0.0'), '1.16.0'));
    assert.ok(!R.versionAtLeast(R.parseVersion('1.15.9'), '1.16.0'));
    assert.throws(() => R.parseVersion('unknown'), /cannot parse/);
  });
});

describe('firecracker contract: responses shoal parses', () => {
  it('InstanceInfo, FirecrackerVersion and Error samples match the response schemas', () => {
    const info: R.InstanceInfo = { app_name: 'Firecracker', id: '0123456789ab', state: 'Paused', vmm_version: '1.16.1' };
    assert.deepEqual(judge.checkResponse('GET', '/', 200, info), []);
    const ver: R.FirecrackerVersionBody = { firecracker_version: '1.16.1' };
    assert.deepEqual(judge.checkResponse('GET', '/version', 200, ver), []);
    for (const [m, p] of [['PUT', '/snapshot/load'], ['PATCH', '/vm'], ['PUT', '/drives/vda'], ['PUT', '/actions']] as const) {
      assert.deepEqual(judge.checkResponse(m, p, 400, { fault_message: 'bad' }), [], `${m} ${p}`);
    }
    assert.deepEqual(judge.checkResponse('PUT', '/actions', 204, undefined), []);
    // The schema is strict the other way too.
    assert.match(judge.checkResponse('GET', '/', 200, { ...info, state: 'Halted' }).join(), /allowed values/);
    assert.match(judge.checkResponse('GET', '/version', 200, {}).join(), /required property 'firecracker_version'/);
  });

  it('the builders cover every operation shoal needs', (t) => {
    const needed = [
      'PUT /boot-source', 'PUT /machine-config', 'PUT /drives/{drive_id}', 'PATCH /drives/{drive_id}',
      'PUT /network-interfaces/{iface_id}', 'PUT /vsock', 'PUT /entropy', 'PUT /logger', 'PUT /metrics',
      'PUT /mmds', 'PUT /mmds/config', 'PUT /actions', 'PATCH /vm', 'PUT /snapshot/create', 'PUT /snapshot/load',
      'GET /version', 'GET /',
    ];
    for (const op of needed) assert.ok(covered.has(op), `${op} never validated (covered: ${[...covered].join(', ')})`);
    t.diagnostic(`${covered.size} of ${judge.operations().length} spec operations exercised, ${validated} bodies validated in total`);
  });
});
