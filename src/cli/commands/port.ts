/**
 * `shoal port NAME [PORT[/PROTO]]`: the VM's published ports in podman's format
 * (`80/tcp -> 0.0.0.0:8080`), or, for one guest port, its host addresses.
 */
import type { Command } from 'commander';
import { act } from '../act';
import { StateStore } from '../../state/store';
import { ShoalError } from '../../util/errors';

export function portCommand(name: string, port: string | undefined): number {
  const forwards = new StateStore().get(name).config.publish ?? [];
  if (port === undefined) {
    for (const f of forwards) process.stdout.write(`${f.guestPort}/${f.proto} -> ${f.hostAddress}:${f.hostPort}\n`);
    return 0;
  }
  const match = /^(\d{1,5})(?:\/(tcp|udp))?$/.exec(port);
  if (!match) throw new ShoalError(`invalid port "${port}": expected PORT[/tcp|/udp]`);
  const guestPort = Number(match[1]);
  const proto = match[2] ?? 'tcp';
  const hits = forwards.filter((f) => f.guestPort === guestPort && f.proto === proto);
  if (hits.length === 0) throw new ShoalError(`no public port ${guestPort}/${proto} published for ${name}`);
  for (const f of hits) process.stdout.write(`${f.hostAddress}:${f.hostPort}\n`);
  return 0;
}

/** The command's flags, declared beside its handler. */
export function registerPort(program: Command): void {
  program
    .command('port')
    .description('list a VM\'s published ports, or the host address of one')
    .argument('<name>', 'VM name or id')
    .argument('[port]', 'a guest port, PORT[/tcp|/udp]')
    .action(act((name: string, port: string | undefined) => portCommand(name, port)));
}
