/**
 * The request and reply schemas (TypeBox, i.e. JSON Schema): fastify validates every request
 * with them and @fastify/swagger builds the OpenAPI document from the very same objects, which
 * the SDK's types are generated from (sdk/src/openapi.ts). Objects refuse unknown fields.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';

const strict = { additionalProperties: false } as const;

export const ErrorReply = Type.Object(
  { error: Type.Object({ code: Type.String(), message: Type.String() }, strict) },
  { ...strict, $id: 'Error', description: 'Every error: one machine-readable code, one clear message.' },
);

const EnvMap = Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 256 }), Type.String({ maxLength: 32 * 1024 }), { maxProperties: 256 });
const Metadata = Type.Record(Type.String({ minLength: 1, maxLength: 128 }), Type.String({ maxLength: 1024 }), { maxProperties: 64 });
const Name = Type.String({ pattern: '^[a-zA-Z0-9][a-zA-Z0-9_.-]*$', minLength: 1, maxLength: 63 });
const Tag = Type.String({ pattern: '^[a-zA-Z0-9][a-zA-Z0-9_.-]*$', minLength: 1, maxLength: 63 });
const Argv = Type.Array(Type.String({ maxLength: 64 * 1024 }), { minItems: 1, maxItems: 1024 });
export const TimeoutSec = Type.Integer({ minimum: 1, maximum: 86_400 });

export const CreateSandbox = Type.Object(
  {
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 4096, description: 'A registry reference, or docker-archive:PATH / oci-archive:PATH of a file under one of the server\'s --image-dir directories (PATH absolute or relative to such a directory).' })),
    snapshot: Type.Optional(Tag),
    name: Type.Optional(Name),
    cpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, description: 'vCPUs (default 1)' })),
    memoryMiB: Type.Optional(Type.Integer({ minimum: 256, maximum: 262_144, description: 'guest memory (default 1024)' })),
    env: Type.Optional(EnvMap),
    cmd: Type.Optional(Argv),
    timeoutSec: Type.Optional(TimeoutSec),
    metadata: Type.Optional(Metadata),
    network: Type.Optional(Type.Union([Type.Literal('rootless'), Type.Literal('slirp4netns'), Type.Literal('bridged'), Type.Literal('none')])),
    publish: Type.Optional(Type.Array(Type.String({ maxLength: 64 }), { maxItems: 64 })),
  },
  { ...strict, $id: 'CreateSandbox' },
);
export type CreateSandbox = Static<typeof CreateSandbox>;

export const Sandbox = Type.Object(
  {
    sandboxId: Type.String(),
    name: Type.String(),
    state: Type.String({ description: 'creating, starting, running, stopping, stopped, failed, dead, or paused (POST .../pause; no VM until .../resume)' }),
    image: Type.String(),
    cpus: Type.Integer(),
    memoryMiB: Type.Integer(),
    createdAt: Type.String(),
    expiresAt: Type.Union([Type.String(), Type.Null()]),
    metadata: Type.Record(Type.String(), Type.String()),
    parentId: Type.Union([Type.String(), Type.Null()]),
  },
  { ...strict, $id: 'Sandbox' },
);
export type Sandbox = Static<typeof Sandbox>;

export const SetTimeout = Type.Object({ timeoutSec: TimeoutSec }, { ...strict, $id: 'SetTimeout' });
export const Pause = Type.Object({}, { ...strict, $id: 'Pause', description: 'No fields: the body may be empty or absent.' });
export const Resume = Type.Object({ timeoutSec: Type.Optional(TimeoutSec) }, { ...strict, $id: 'Resume' });

export const Exec = Type.Object(
  {
    cmd: Type.Union([Type.String({ minLength: 1, maxLength: 64 * 1024, description: 'run by /bin/sh -c' }), Argv]),
    cwd: Type.Optional(Type.String({ pattern: '^/', maxLength: 4096 })),
    env: Type.Optional(EnvMap),
    user: Type.Optional(Type.String({ pattern: '^[a-zA-Z0-9_][a-zA-Z0-9_.:-]*$', maxLength: 64 })),
    stdin: Type.Optional(Type.Boolean({ description: 'keep stdin open for POST .../stdin (otherwise /dev/null)' })),
    timeoutSec: Type.Optional(TimeoutSec),
    vm: Type.Optional(Type.Boolean({ description: 'run in the guest OS instead of the container' })),
  },
  { ...strict, $id: 'Exec' },
);
export type Exec = Static<typeof Exec>;

export const ExecResult = Type.Object(
  {
    pid: Type.Integer(),
    exitCode: Type.Union([Type.Integer(), Type.Null()]),
    signal: Type.Union([Type.String(), Type.Null()]),
    stdout: Type.String(),
    stderr: Type.String(),
    truncated: Type.Boolean({ description: 'true when stdout or stderr was cut at the output cap' }),
    timedOut: Type.Boolean(),
    durationMs: Type.Integer(),
  },
  { ...strict, $id: 'ExecResult' },
);

export const ProcessInfo = Type.Object(
  {
    pid: Type.Integer(),
    cmd: Type.Array(Type.String()),
    running: Type.Boolean(),
    exitCode: Type.Union([Type.Integer(), Type.Null()]),
    signal: Type.Union([Type.String(), Type.Null()]),
    error: Type.Union([Type.String(), Type.Null()]),
    startedAt: Type.String(),
  },
  { ...strict, $id: 'ProcessInfo' },
);

export const Signal = Type.Object(
  { signal: Type.String({ pattern: '^(SIG)?[A-Z0-9]{2,10}$', description: 'e.g. SIGTERM, SIGKILL, SIGINT' }) },
  { ...strict, $id: 'Signal' },
);

export const PathBody = Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096 }) }, { ...strict, $id: 'PathBody' });
export const RenameBody = Type.Object({ from: Type.String({ minLength: 1, maxLength: 4096 }), to: Type.String({ minLength: 1, maxLength: 4096 }) }, { ...strict, $id: 'RenameBody' });

export const FileEntry = Type.Object(
  {
    name: Type.String(),
    path: Type.String(),
    type: Type.Union([Type.Literal('file'), Type.Literal('dir'), Type.Literal('symlink'), Type.Literal('other')]),
    size: Type.Integer(),
    mode: Type.Integer(),
    mtime: Type.String(),
  },
  { ...strict, $id: 'FileEntry' },
);

export const SnapshotCreate = Type.Object({ tag: Tag }, { ...strict, $id: 'SnapshotCreate' });
export const SnapshotCreated = Type.Object({ tag: Type.String(), parent: Type.String(), pauseMs: Type.Integer() }, { ...strict, $id: 'SnapshotCreated' });
export const SnapshotInfo = Type.Object(
  { tag: Type.String(), parent: Type.String(), createdAt: Type.String(), image: Type.String() },
  { ...strict, $id: 'SnapshotInfo' },
);

export const Fork = Type.Object(
  { count: Type.Integer({ minimum: 1, maximum: 100 }), timeoutSec: Type.Optional(TimeoutSec), metadata: Type.Optional(Metadata) },
  { ...strict, $id: 'Fork' },
);
export const ForkEntry = Type.Union(
  [
    Type.Object({ sandbox: Type.Ref('Sandbox') }, strict),
    Type.Object({ error: Type.Object({ code: Type.String(), message: Type.String() }, strict) }, strict),
  ],
  { $id: 'ForkEntry' },
);

export const Health = Type.Object({ status: Type.Literal('ok'), version: Type.String() }, { ...strict, $id: 'Health' });

/** Every named schema, registered once with fastify so routes and the OpenAPI document share them. */
export const NAMED_SCHEMAS: TSchema[] = [ErrorReply, CreateSandbox, Sandbox, SetTimeout, Pause, Resume, Exec, ExecResult, ProcessInfo, Signal, PathBody, RenameBody, FileEntry, SnapshotCreate, SnapshotCreated, SnapshotInfo, Fork, ForkEntry, Health];

export const ref = (schema: TSchema): TSchema => Type.Ref(schema.$id!);
