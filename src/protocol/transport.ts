/**
 * Where the host-guest stream is found, agreed by both ends (the guest agent and the VMM
 * backends): the virtio-serial port's name (QEMU) and the agent's AF_VSOCK port (Firecracker's
 * hybrid vsock). Node built-ins only: this file also runs inside the guest.
 */
export const AGENT_VSOCK_PORT = 1024;
export const SERIAL_PORT_NAME = 'shoal.agent';
