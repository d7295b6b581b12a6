/** The core's surface, for the front ends (cli/, api/, mcp/, the shim). */
export { VmCore, viewOf } from './core';
export { configOf, createVm, startVm, type CreateOptions, type StartedVm } from './create';
export { ConflictError, InvalidSpecError, NotFoundError, validating } from './errors';
export { ChannelProcess, execRequest, execVm } from './exec';
export { AgentFiles, filesChannel, type FileOps } from './files';
export { forkVm, type ForkChild, type ForkOptions, type ForkResult } from './fork';
export { checkCpus, checkMemory, MAX_CPUS, MIN_MEMORY_MIB } from './limits';
export { discardVm, removeVm } from './remove';
export type { CreateSpec, ExecSpec, KeptProcessInfo, OnProgress, ProcessEnd, ProgressEvent, RemoteProcess, SnapshotView, VmView } from './types';
