/**
 * The VMM differences code above src/vmm asks for by name. The kernel command line is part of
 * the image cache's key, so it must stay byte for byte what each VMM's guest got before.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { attachmentFor } from '../../src/network/mode';
import { vmKernelCmdline } from '../../src/supervisor/guest-cmdline';
import { vmmTraits } from '../../src/vmm/traits';

const BASE = 'console=ttyS0 reboot=t panic=1';

test('the guest command line per VMM: transport, power-off, hostname, addresses', () => {
  assert.equal(vmKernelCmdline(BASE, vmmTraits('qemu'), 'web', 'qemu-slirp'), `${BASE} shoal.transport=serial shoal.hostname=web shoal.net=slirp`);
  assert.equal(
    vmKernelCmdline(BASE, vmmTraits('firecracker'), 'web', 'namespace', { address: '10.0.2.100', prefixLength: 24, gateway: '10.0.2.2', nameserver: '10.0.2.3' }),
    'console=ttyS0 reboot=k panic=1 shoal.transport=vsock shoal.poweroff=reboot shoal.hostname=web shoal.net=static shoal.ip=10.0.2.100/24 shoal.gw=10.0.2.2 shoal.dns=10.0.2.3',
  );
  assert.equal(vmKernelCmdline(BASE, vmmTraits('qemu'), 'x'), `${BASE} shoal.transport=serial shoal.hostname=x`);
});

test('traits answer what callers used to ask by comparing names', () => {
  assert.equal(vmmTraits('qemu').kernelImage, 'vmlinuz');
  assert.equal(vmmTraits('firecracker').kernelImage, 'vmlinux');
  assert.equal(attachmentFor('rootless', 'qemu'), 'qemu-slirp');
  assert.equal(attachmentFor('rootless', 'firecracker'), 'namespace');
  assert.equal(vmmTraits('qemu').imageCache, true);
  assert.equal(vmmTraits('firecracker').imageCache, false);
  assert.equal(vmmTraits('firecracker').uffdRestore, true);
  assert.equal(vmmTraits('qemu').uffdRestore, false);
  assert.equal(vmmTraits('firecracker').jailedSnapshots, false);
});
