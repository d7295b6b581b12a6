/** `shoal mcp`: the MCP server on stdio (src/mcp/server.ts). */
import type { Command } from 'commander';
import { ShoalCore } from '../../api/core';
import { serveMcp } from '../../mcp/server';
import { act } from '../act';

export async function mcpCommand(): Promise<number> {
  await serveMcp(new ShoalCore());
  return 0;
}

/** The command's flags, declared beside its handler. */
export function registerMcp(program: Command): void {
  program
    .command('mcp')
    .description('a Model Context Protocol server on stdio: tools to create sandboxes, run commands, move files, fork, snapshot')
    .action(act(() => mcpCommand()));
}
