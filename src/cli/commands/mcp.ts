/** `shoal mcp`: the MCP server on stdio (src/mcp/server.ts). */
import type { Command } from 'commander';
import { act } from '../act';
import { parseImageDirs } from './serve';

export async function mcpCommand(flags: { imageDir?: string[] }): Promise<number> {
  const imageDirs = parseImageDirs(flags.imageDir);
  // Loaded here, not at the top: the MCP SDK is a tenth of a second of every other command's start.
  const [{ ShoalCore }, { serveMcp }] = await Promise.all([import('../../api/core'), import('../../mcp/server')]);
  await serveMcp(new ShoalCore(), undefined, { imageDirs });
  return 0;
}

/** The command's flags, declared beside its handler. */
export function registerMcp(program: Command): void {
  program
    .command('mcp')
    .description('a Model Context Protocol server on stdio: tools to create sandboxes, run commands, move files, fork, snapshot')
    .option('--image-dir <dir>', 'a directory whose docker-archive/oci-archive files the tools may use as images (repeatable; default none)', (value: string, previous: string[] = []) => [...previous, value])
    .action(act((flags: { imageDir?: string[] }) => mcpCommand(flags)));
}
