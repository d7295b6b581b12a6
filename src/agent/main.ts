/**
 * The shoal guest agent: PID 2 inside the VM (under tini), serving the host over one stream.
 */
// Blocking reads of the serial port hold one thread-pool thread for good; give the pool room.
process.env.UV_THREADPOOL_SIZE = process.env.UV_THREADPOOL_SIZE ?? '8';

import fs from 'node:fs';
import * as native from '../native/index';
import { serveSession } from './session';
import { AGENT_VSOCK_PORT, openSerialPort } from './transport';
import { startSerialRelay } from './vsock-relay';

function log(message: string): void {
  try {
    fs.appendFileSync('/dev/kmsg', `<3>shoal-agent: ${message}\n`);
  } catch {
    process.stderr.write(`shoal-agent: ${message}\n`);
  }
}

function kernelParam(name: string): string | undefined {
  const cmdline = fs.readFileSync('/proc/cmdline', 'utf8');
  for (const word of cmdline.trim().split(/\s+/)) {
    if (word.startsWith(`${name}=`)) return word.slice(name.length + 1);
  }
  return undefined;
}

/** shoal.debug=1 on the kernel command line traces every frame to the console. */
const debug = kernelParam('shoal.debug') === '1';

async function serveSerial(): Promise<void> {
  const port = await openSerialPort(30_000);
  const mux = serveSession(port, log, debug);
  // The host end closed: what is buffered belongs to a host that is gone.
  port.onHostGone = () => {
    if (debug || mux.openChannels > 0) log('host disconnected; dropping channels');
    mux.reset();
  };
  log('agent ready on virtio-serial');
}

async function serveVsock(): Promise<void> {
  // The typed wrapper (src/native/index.ts) finds the addon next to itself in the guest payload
  // (/run/shoal/agent/native/). The raw binding's names differ (accept, bridge): calling it
  // directly once made every Firecracker guest die at its first accept.
  const listenFd = native.vsockListen(AGENT_VSOCK_PORT);
  log(`agent ready on vsock port ${AGENT_VSOCK_PORT}`);
  if (kernelParam('shoal.vsock_relay') === 'serial') startSerialRelay(log);
  for (;;) {
    const socket = native.vsockStream(await native.vsockAccept(listenFd));
    socket.on('error', () => undefined);
    // The stream is half-open capable: once the session ends (the host went away, or Firecracker
    // reset the transport at a snapshot), close it, so the bridge thread and both fds go too.
    serveSession(socket, log, debug).on('close', () => socket.destroy());
  }
}

async function main(): Promise<void> {
  // Load the native addon now, at boot: a clone's recovery uses it, and it should not pay for
  // loading it (nor a snapshot of this VM miss it).
  if (!native.isNativeAvailable()) log('the native addon did not load: clones cannot recover without processes');
  const transport = kernelParam('shoal.transport') ?? 'serial';
  if (transport === 'vsock') await serveVsock();
  else await serveSerial();
}

main().catch((err: Error) => {
  log(`fatal: ${err.stack ?? err.message}`);
  process.exit(1);
});
