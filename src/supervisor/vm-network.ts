/**
 * The host side of one VM's network, owned by its supervisor: how its device is attached
 * (QEMU slirp, a slirp4netns namespace, a TAP on the bridge), the parts that attachment needs
 * before and after the VMM starts, the guest's addresses, and the clean-up at the end.
 */
import { attachTap, claimAddress, createTap, ensureBridge, GATEWAY, hostNameserver, PREFIX_LENGTH, tapName } from '../network/bridge';
import { attachmentFor, macFor, netSpecFor, reachesHostLoopback, SLIRP_HOST_ADDRESS, type NetAttachment } from '../network/mode';
import { NAMESPACE_GATEWAY, NAMESPACE_GUEST_ADDRESS, NAMESPACE_NAMESERVER, NAMESPACE_PREFIX_LENGTH, startNamespaceNetwork, type NamespaceNetwork } from '../network/namespace-network';
import { assertNetnsFile, createNetnsTap, mirrorTap, readNetnsInterface, unmirrorTap } from '../network/netns-attach';
import { startPortProxies, type PortProxy } from '../network/port-proxy';
import { bindPort } from '../network/port-binding';
import { proxyEnvironment } from '../network/proxy-env';
import type { GuestNetworkIdentity } from '../protocol/messages';
import { ShoalError } from '../util/errors';
import type { NetSpec, VmmBackend } from '../vmm/backend';
import type { StaticAddress } from './guest-cmdline';
import type { VmRecordHandle } from './vm-record-handle';

export class VmNetwork {
  /** Published ports of a bridged VM, proxied by this process. */
  private portProxy: PortProxy | undefined;
  /** The namespace, TAP and slirp4netns of a `--network slirp4netns` VM. */
  private namespaceNetwork: NamespaceNetwork | undefined;

  constructor(
    private readonly record: VmRecordHandle,
    /** The VM's directory (the namespace's sockets live there). */
    private readonly runDir: string,
    private readonly progress: (message: string) => void,
  ) {}

  get attachment(): NetAttachment {
    const { config, backend } = this.record.current;
    return attachmentFor(config.network ?? 'none', backend);
  }

  /**
   * The host side of this VM's network, before its VMM starts. Bridged: the shared bridge and
   * NAT (idempotent), an address of its own, its TAP bound to its MAC and that address
   * (../network/port-binding.ts), and its published ports' proxies. Namespace: a
   * user+network namespace with its TAP and slirp4netns, which forwards the published ports.
   */
  async prepare(): Promise<void> {
    const forwards = this.record.current.config.publish ?? [];
    const attachment = this.attachment;
    if (attachment === 'namespace') {
      this.progress('creating the network namespace (slirp4netns)');
      this.namespaceNetwork = await startNamespaceNetwork({ runDir: this.runDir, forwards, allowHostLoopback: this.record.current.config.allowHostLoopback === true });
    } else if (attachment === 'netns') {
      const netnsPath = this.netnsPath();
      assertNetnsFile(netnsPath);
      this.progress(`joining the network namespace ${netnsPath}`);
      const iface = await readNetnsInterface(netnsPath);
      this.record.update((r) => { r.netnsInterface = iface; });
    } else if (attachment === 'bridge') {
      await ensureBridge();
      const id = this.record.current.id;
      const address = claimAddress(id);
      this.record.update((r) => { r.bridgedAddress = address; });
      // Bound before the VMM makes (or opens) the TAP, so it never carries an unbound frame; the
      // release (by this supervisor or `rm -f`) unbinds it.
      await bindPort({ port: tapName(id), mac: macFor(id), address, owner: id });
      if (forwards.length > 0) this.portProxy = await startPortProxies(forwards, address);
    }
  }

  /** A bridged VM's TAP, for a VMM that does not create its own (Firecracker), on the bridge before it starts. */
  async createTapIfNeeded(backend: VmmBackend, net: NetSpec | undefined): Promise<void> {
    if (this.attachment === 'netns' && !backend.createsTap) {
      await createNetnsTap(this.netnsPath());
      return;
    }
    if (this.attachment !== 'bridge' || backend.createsTap || !net?.tap) return;
    const jailer = this.record.current.config.jailer;
    await createTap(net.tap, jailer ? { uid: jailer.uid, gid: jailer.gid } : undefined);
    await attachTap(net.tap);
  }

  /**
   * Once the VMM holds its TAP: a TAP the VMM made itself (QEMU) joins the bridge; in a pod's
   * namespace, the TAP and the namespace's interface are mirrored to each other.
   */
  async connectTap(backend: VmmBackend, net: NetSpec | undefined): Promise<void> {
    if (this.attachment === 'bridge' && backend.createsTap && net?.tap) await attachTap(net.tap);
    const iface = this.record.current.netnsInterface;
    if (this.attachment === 'netns' && iface) await mirrorTap(this.netnsPath(), iface);
  }

  /**
   * A clone's own identity on its network, which its agent applies before answering: bridged,
   * its own address on the bridge; in a pod's namespace, that namespace interface's.
   */
  cloneIdentity(): GuestNetworkIdentity | undefined {
    const address = this.record.current.bridgedAddress;
    if (this.attachment === 'bridge' && address) return { mac: macFor(this.record.current.id), address: `${address}/${PREFIX_LENGTH}`, gateway: GATEWAY };
    const iface = this.record.current.netnsInterface;
    if (this.attachment === 'netns' && iface) {
      if (!iface.gateway) throw new ShoalError(`a clone cannot take ${iface.name} of ${this.netnsPath()}: it has no default route`);
      return { mac: iface.mac, address: `${iface.address}/${iface.prefixLength}`, gateway: iface.gateway };
    }
    return undefined;
  }

  private netnsPath(): string {
    const netnsPath = this.record.current.config.netnsPath;
    if (!netnsPath) throw new ShoalError('--network ns needs a namespace path');
    return netnsPath;
  }

  /** The addresses guest-init gives eth0, in the modes where they are not slirp's DHCP-free defaults. */
  staticAddress(): StaticAddress | undefined {
    const attachment = this.attachment;
    if (attachment === 'namespace') {
      return { address: NAMESPACE_GUEST_ADDRESS, prefixLength: NAMESPACE_PREFIX_LENGTH, gateway: NAMESPACE_GATEWAY, nameserver: NAMESPACE_NAMESERVER };
    }
    const iface = this.record.current.netnsInterface;
    if (attachment === 'netns' && iface) {
      return { address: iface.address, prefixLength: iface.prefixLength, ...(iface.gateway ? { gateway: iface.gateway } : {}), nameserver: hostNameserver() };
    }
    const bridgedAddress = this.record.current.bridgedAddress;
    if (attachment === 'bridge' && bridgedAddress) {
      return { address: bridgedAddress, prefixLength: PREFIX_LENGTH, gateway: GATEWAY, nameserver: hostNameserver() };
    }
    return undefined;
  }

  /** This VM's network device, in the namespace prepare() made when it has one. */
  netSpec(): NetSpec | undefined {
    const record = this.record.current;
    const net = netSpecFor(this.attachment, record.id, record.config.publish ?? []);
    if (net && this.namespaceNetwork) net.namespacePid = this.namespaceNetwork.holderPid;
    if (net && this.attachment === 'netns') {
      net.netnsPath = this.netnsPath();
      if (record.netnsInterface) net.mac = record.netnsInterface.mac;
    }
    return net;
  }

  /** A restored VM's network device: the snapshot's, attached this VM's own way. */
  cloneNetSpec(source: NetSpec): NetSpec {
    const net = this.netSpec();
    if (!net) throw new ShoalError('this VM has no network but its snapshot has a network device');
    // The device state in the snapshot carries the source's MAC; a bridged clone or one in a
    // pod's namespace changes it in the guest (cloneIdentity), the other modes keep it (each is
    // alone on its own network).
    if (this.attachment !== 'bridge' && this.attachment !== 'netns') net.mac = source.mac;
    return net;
  }

  /** The host's proxy settings as the guest must see them (this process inherited the CLI's environment). */
  proxyEnv(): Record<string, string> {
    const reaches = reachesHostLoopback(this.attachment, this.record.current.config.allowHostLoopback);
    return proxyEnvironment(process.env, reaches ? SLIRP_HOST_ADDRESS : null);
  }

  /** Ends the port proxies and the namespace, and a pod namespace's mirror (the TAP and address claim go with releaseVmResources). */
  async close(): Promise<void> {
    this.portProxy?.close();
    await this.namespaceNetwork?.close();
    const iface = this.record.current.netnsInterface;
    if (this.attachment === 'netns' && iface) await unmirrorTap(this.netnsPath(), iface);
  }
}
