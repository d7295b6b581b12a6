/**
 * Pods through containerd's CRI plugin, spoken to as kubelet speaks to it (gRPC, runtime.v1, the
 * project's subset in proto/cri/api.proto) on a containerd 1.6.20 this file starts with its own
 * root, state, sockets and config: the CRI plugin on, the runtime handler `shoal` =
 * io.containerd.shoal.v2, CNI (Debian's bridge + host-local) configured in the temp dir, and a
 * sandbox image imported from a local archive (registries point at a closed port, so a pull
 * would fail at once). One pod, so one VM boot: two containers that reach each other on
 * localhost, ExecSync, the exit code of a container that exits 7, the pod reached on its CNI
 * address from the host, and StopPodSandbox + RemovePodSandbox leaving nothing. Before it, a
 * pod on the host's network, which the shim refuses at Create (no VM): its reason is one line of
 * the shim's in containerd's log (the bundle's `log` FIFO).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { haveContainerd, mountsUnder, processesNaming, TestContainerd, vmIdsOf } from '../helpers/containerd';
import { buildBusyboxDockerArchive } from '../helpers/images';
import { ShoalSandbox, waitUntil } from '../helpers/shoal-cli';

const PROJECT = path.resolve(__dirname, '..', '..', '..');
const K8S_NS = 'k8s.io';
const IMAGE = 'localhost/shoal-cri-busybox:latest';
const NETNS_DIR = '/var/run/netns';
const haveCni = fs.existsSync('/usr/lib/cni/bridge') && fs.existsSync('/usr/lib/cni/host-local') && fs.existsSync('/usr/lib/cni/loopback');

const sandbox = new ShoalSandbox('cri');
const containerd = new TestContainerd('shim-cri', sandbox);
const suffix = crypto.randomBytes(3).toString('hex');
const bridge = `shcri${suffix}`;
// 10.97.x.0/24: apart from netns.test.ts' 10.98.x.0/24.
const subnet = `10.97.${100 + (crypto.randomBytes(1)[0]! % 100)}.0/24`;

type Callback = (err: grpc.ServiceError | null, response: unknown) => void;
type RuntimeClient = grpc.Client & Record<string, (request: unknown, options: grpc.CallOptions, callback: Callback) => void>;
let client: RuntimeClient | undefined;

/** One CRI call with a deadline; the response as proto-loader decodes it (snake_case keys). */
function cri<T = Record<string, unknown>>(method: string, request: unknown, timeoutMs = 120_000): Promise<T> {
  return new Promise((resolve, reject) => {
    client![method]!(request, { deadline: Date.now() + timeoutMs }, (err, response) => {
      if (err) reject(new Error(`${method}: ${err.details || err.message}`));
      else resolve(response as T);
    });
  });
}

function getBody(url: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 3000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => { body += d.toString(); });
      res.on('end', () => resolve(body));
    });
    req.on('timeout', () => { req.destroy(); resolve(undefined); });
    req.on('error', () => resolve(undefined));
  });
}

function netnsEntries(): string[] {
  try {
    return fs.readdirSync(NETNS_DIR);
  } catch {
    return [];
  }
}

const podConfig = {
  metadata: { name: 'shoal-pod', uid: `uid-${suffix}`, namespace: 'default', attempt: 0 },
  hostname: 'shoalpod',
  log_directory: '',
  labels: {},
  annotations: {},
};

function containerConfig(name: string, command: string[]): Record<string, unknown> {
  return { metadata: { name, attempt: 0 }, image: { image: IMAGE }, command, args: [], working_dir: '/', envs: [{ key: 'POD_TEST', value: name }], labels: {}, annotations: {}, log_path: '' };
}

describe('pods through containerd\'s CRI on containerd-shim-shoal-v2', { skip: haveContainerd && haveCni ? false : 'containerd, ctr or the CNI plugins are not installed' }, () => {
  let podId = '';
  let podIp = '';
  const containerIds: Record<string, string> = {};
  let netnsBefore: string[] = [];

  before(async () => {
    const cniConf = path.join(containerd.dir, 'cni-conf');
    fs.mkdirSync(cniConf);
    fs.writeFileSync(path.join(cniConf, '10-shoal-test.conflist'), JSON.stringify({
      cniVersion: '0.4.0',
      name: `shoalcri${suffix}`,
      // A default route, as pod networks have (a restored pod's guest takes it with the address).
      plugins: [{ type: 'bridge', bridge, isGateway: true, ipMasq: false, ipam: { type: 'host-local', subnet, routes: [{ dst: '0.0.0.0/0' }], dataDir: path.join(containerd.dir, 'ipam') } }],
    }));
    const closed = 'http://127.0.0.1:1';
    await containerd.start([
      '[plugins."io.containerd.grpc.v1.cri"]',
      `  sandbox_image = "${IMAGE}"`,
      '  stream_server_address = "127.0.0.1"',
      '  stream_server_port = "0"',
      '  enable_cdi = false',
      // Only shoal: the handler kubelet's RuntimeClass names, and the default (there is no runc here).
      '[plugins."io.containerd.grpc.v1.cri".containerd]',
      '  default_runtime_name = "shoal"',
      '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.shoal]',
      '  runtime_type = "io.containerd.shoal.v2"',
      // The pod annotations the shim reads (shoal.dev/restore-from) reach the sandbox's spec.
      '  pod_annotations = ["shoal.dev/*"]',
      '[plugins."io.containerd.grpc.v1.cri".cni]',
      '  bin_dir = "/usr/lib/cni"',
      `  conf_dir = "${cniConf}"`,
      '  max_conf_num = 1',
      // Nothing is to be pulled: a pull of either registry fails at once.
      '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]',
      `  endpoint = ["${closed}"]`,
      '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."localhost"]',
      `  endpoint = ["${closed}"]`,
    ].join('\n'));
    // The sandbox image is the app image too: busybox, its command a long sleep.
    const archive = await buildBusyboxDockerArchive(path.join(containerd.dir, 'image.tar'), IMAGE, ['sleep', '2147483647']);
    const imported = await containerd.ctr(K8S_NS, ['images', 'import', archive]);
    assert.equal(imported.code, 0, imported.stderr);
    const definition = protoLoader.loadSync(path.join(PROJECT, 'proto', 'cri', 'api.proto'), { keepCase: true, longs: Number, enums: String, defaults: true });
    const runtime = (grpc.loadPackageDefinition(definition).runtime as grpc.GrpcObject).v1 as grpc.GrpcObject;
    const Service = runtime.RuntimeService as grpc.ServiceClientConstructor;
    client = new Service(`unix://${containerd.socket}`, grpc.credentials.createInsecure()) as unknown as RuntimeClient;
    const version = await cri<{ runtime_name: string; runtime_api_version: string }>('Version', { version: 'v1' }, 10_000);
    assert.equal(version.runtime_api_version, 'v1');
  });

  after(async () => {
    if (podId !== '') {
      await cri('StopPodSandbox', { pod_sandbox_id: podId }, 60_000).catch(() => undefined);
      await cri('RemovePodSandbox', { pod_sandbox_id: podId }, 60_000).catch(() => undefined);
    }
    client?.close();
    await containerd.stop();
    sandbox.cleanup();
    containerd.removeFiles();
    spawnSync('ip', ['link', 'del', bridge], { timeout: 10_000 });
  });

  test('a pod on the host\'s network is refused: one clear line from the shim in containerd\'s log, nothing left', async () => {
    const config = { ...podConfig, metadata: { ...podConfig.metadata, name: 'shoal-hostnet', uid: `uid-h-${suffix}` }, linux: { security_context: { namespace_options: { network: 'NODE', pid: 'CONTAINER', ipc: 'POD' } } } };
    await assert.rejects(cri('RunPodSandbox', { config, runtime_handler: 'shoal' }, 60_000), /hostNetwork\) cannot run in a shoal VM/);
    const lines = fs.readFileSync(containerd.logFile, 'utf8').split('\n').filter((l) => /shim\[\d+\] containerd\.task\.v2\.Task\/Create: a pod on the host's network \(hostNetwork\) cannot run in a shoal VM/.test(l));
    assert.equal(lines.length, 1, 'the shim\'s own line, through containerd\'s log FIFO');
    await waitUntil('the refused pod\'s shim to end', 20_000, () => processesNaming(containerd.shimSockets).length === 0);
    assert.deepEqual(vmIdsOf(sandbox), []);
  });

  test('RunPodSandbox with the handler shoal: one VM on the pod\'s CNI address', async () => {
    netnsBefore = netnsEntries();
    const started = Date.now();
    const response = await cri<{ pod_sandbox_id: string }>('RunPodSandbox', { config: podConfig, runtime_handler: 'shoal' }, 180_000);
    console.log(`RunPodSandbox (VM boot): ${Date.now() - started} ms`);
    podId = response.pod_sandbox_id;
    assert.match(podId, /^[0-9a-f]{64}$/);
    const status = await cri<{ status: { state: string; network: { ip: string }; runtime_handler: string } }>('PodSandboxStatus', { pod_sandbox_id: podId, verbose: false });
    assert.equal(status.status.state, 'SANDBOX_READY');
    assert.equal(status.status.runtime_handler, 'shoal');
    podIp = status.status.network.ip;
    assert.match(podIp, /^10\.97\.\d+\.\d+$/);
    assert.equal(vmIdsOf(sandbox).length, 1, 'the pod is one shoal VM');
  });

  test('two containers in the pod\'s VM reach each other on localhost; ExecSync; the host reaches the pod on its CNI address', async () => {
    assert.ok(podId, 'the pod runs');
    const started = Date.now();
    // Both at once (kubelet starts a pod's containers one after the other; the shim takes either).
    await Promise.all(([
      ['web', ['sh', '-c', 'mkdir -p /www && echo "hello from $POD_TEST" > /www/index.html && exec httpd -f -p 8080 -h /www']],
      ['client', ['sh', '-c', 'until wget -q -O /tmp/got http://127.0.0.1:8080/; do sleep 0.2; done; exec sleep 2147483647']],
    ] as const).map(async ([name, command]) => {
      const created = await cri<{ container_id: string }>('CreateContainer', { pod_sandbox_id: podId, config: containerConfig(name, [...command]), sandbox_config: podConfig });
      containerIds[name] = created.container_id;
      await cri('StartContainer', { container_id: created.container_id });
    }));
    console.log(`two containers created and started: ${Date.now() - started} ms`);
    assert.equal(vmIdsOf(sandbox).length, 1, 'the containers run in the pod\'s VM, not in VMs of their own');
    // The client fetched the page from the web container on localhost.
    let got: { stdout: Buffer; stderr: Buffer; exit_code: number } | undefined;
    await waitUntil('the client to fetch the page on localhost', 30_000, async () => {
      const result = await cri<{ stdout: Buffer; stderr: Buffer; exit_code: number }>('ExecSync', { container_id: containerIds.client, cmd: ['cat', '/tmp/got'], timeout: 10 });
      got = result;
      return result.exit_code === 0;
    });
    assert.equal(got!.stdout.toString().trim(), 'hello from web');
    // ExecSync: stdout, stderr and the exit code apart, in the container (its env, its rootfs).
    const exec = await cri<{ stdout: Buffer; stderr: Buffer; exit_code: number }>('ExecSync', { container_id: containerIds.web, cmd: ['sh', '-c', 'echo "out $POD_TEST"; cat /www/index.html >&2; exit 3'], timeout: 20 });
    assert.equal(exec.exit_code, 3);
    assert.equal(exec.stdout.toString().trim(), 'out web');
    assert.equal(exec.stderr.toString().trim(), 'hello from web');
    // From the host (its own network namespace), on the pod's CNI address.
    let body: string | undefined;
    await waitUntil(`http://${podIp}:8080/ from the host`, 20_000, async () => (body = await getBody(`http://${podIp}:8080/`)) !== undefined);
    assert.equal(body!.trim(), 'hello from web');
  });

  test('ContainerStatus gives the exit code of a container that exits 7', async () => {
    assert.ok(podId, 'the pod runs');
    const created = await cri<{ container_id: string }>('CreateContainer', { pod_sandbox_id: podId, config: containerConfig('exit7', ['sh', '-c', 'exit 7']), sandbox_config: podConfig });
    containerIds.exit7 = created.container_id;
    await cri('StartContainer', { container_id: created.container_id });
    let status: { state: string; exit_code: number; finished_at: number } | undefined;
    await waitUntil('the container to exit', 30_000, async () => {
      status = (await cri<{ status: typeof status }>('ContainerStatus', { container_id: created.container_id })).status;
      return status?.state === 'CONTAINER_EXITED';
    });
    assert.equal(status!.exit_code, 7);
    assert.ok(status!.finished_at > 0);
    await cri('RemoveContainer', { container_id: created.container_id });
  });

  test('a pod annotated shoal.dev/restore-from starts as a clone of a snapshot of the first pod, on its own CNI address', async () => {
    assert.ok(podId, 'the pod runs');
    const [first] = await sandbox.json<Array<{ name: string; id: string }>>(['ls', '--json']);
    const snap = await sandbox.run(['snapshot', 'create', first!.name, '--tag', 'pod-snap'], { timeoutMs: 180_000 });
    assert.equal(snap.code, 0, snap.stderr.toString());
    const config = { ...podConfig, metadata: { ...podConfig.metadata, name: 'shoal-restored', uid: `uid-r-${suffix}` }, annotations: { 'shoal.dev/restore-from': 'pod-snap' } };
    const started = Date.now();
    let restored: { pod_sandbox_id: string } | undefined;
    try {
      restored = await cri<{ pod_sandbox_id: string }>('RunPodSandbox', { config, runtime_handler: 'shoal' }, 180_000);
      console.log(`RunPodSandbox restored from a snapshot: ${Date.now() - started} ms`);
      const status = await cri<{ status: { state: string; network: { ip: string } } }>('PodSandboxStatus', { pod_sandbox_id: restored!.pod_sandbox_id, verbose: false });
      assert.equal(status.status.state, 'SANDBOX_READY');
      const ip = status.status.network.ip;
      assert.match(ip, /^10\.97\.\d+\.\d+$/);
      assert.notEqual(ip, podIp);
      const vms = await sandbox.json<Array<{ name: string; id: string }>>(['ls', '--json']);
      const clone = vms.find((v) => v.id !== first!.id);
      assert.ok(clone && vms.length === 2, 'a second VM, for the restored pod');
      const record = JSON.parse(fs.readFileSync(path.join(sandbox.stateDir, 'vms', clone.id, 'state.json'), 'utf8')) as { restoredFrom?: { tag: string } };
      assert.equal(record.restoredFrom?.tag, 'pod-snap', 'restored, not booted');
      // The clone took its own pod's address (the snapshot's guest had the first pod's).
      const addr = await sandbox.run(['exec', '--vm', clone.name, '--', 'ip', '-4', 'addr', 'show', 'eth0'], { timeoutMs: 60_000 });
      assert.match(addr.stdout.toString(), new RegExp(`inet ${ip.replace(/\./g, '\\.')}/`));
    } finally {
      if (restored) {
        await cri('StopPodSandbox', { pod_sandbox_id: restored.pod_sandbox_id }, 60_000);
        await cri('RemovePodSandbox', { pod_sandbox_id: restored.pod_sandbox_id }, 60_000);
      }
      await sandbox.run(['snapshot', 'rm', '-f', 'pod-snap'], { timeoutMs: 60_000 });
    }
    await waitUntil('the restored pod\'s VM to be gone', 30_000, () => vmIdsOf(sandbox).length === 1);
  });

  test('StopPodSandbox + RemovePodSandbox leave no shim, VM, supervisor, namespace, mount or state file', async () => {
    assert.ok(podId, 'the pod runs');
    const [vmId] = vmIdsOf(sandbox);
    assert.ok(vmId);
    const started = Date.now();
    await cri('StopPodSandbox', { pod_sandbox_id: podId });
    await cri('RemovePodSandbox', { pod_sandbox_id: podId });
    console.log(`StopPodSandbox + RemovePodSandbox: ${Date.now() - started} ms`);
    podId = '';
    await waitUntil('the shim and the VM to be gone', 20_000, () => processesNaming(containerd.shimSockets).length === 0 && processesNaming(vmId!).length === 0);
    assert.deepEqual(vmIdsOf(sandbox), []);
    assert.deepEqual(sandbox.leftovers(), []);
    assert.deepEqual(fs.readdirSync(containerd.shimSockets), []);
    assert.equal(fs.existsSync(`/dev/shm/shoal-${vmId}.ram`), false);
    assert.deepEqual(netnsEntries().filter((n) => !netnsBefore.includes(n) && n.startsWith('cni-')), [], 'the pod\'s network namespace is gone');
    assert.deepEqual(mountsUnder(path.join(containerd.dir, 'state')).filter((m) => m.includes('io.containerd.runtime.v2.task')), []);
    assert.deepEqual(processesNaming('shoal-tap0'), []);
  });
});
