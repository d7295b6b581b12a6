/**
 * E2B's JSON shapes (TypeBox), as e2b-dev/infra's spec/openapi.yml and the SDK 2.51.0's
 * schema.gen.ts name them. Request bodies accept fields shoal does not act on (the SDK sends
 * some of them on every call), but a field asking for something shoal cannot do is refused by
 * the route, not silently dropped.
 */
import { Type, type Static } from '@sinclair/typebox';

/** E2B's error body: the HTTP status again as `code`, and a message. */
export const E2bError = Type.Object({ code: Type.Integer(), message: Type.String() });
export type E2bError = Static<typeof E2bError>;

export const SandboxIdParams = Type.Object({ sandboxID: Type.String({ minLength: 1, maxLength: 128 }) });

const Metadata = Type.Record(Type.String({ minLength: 1, maxLength: 128 }), Type.String({ maxLength: 1024 }), { maxProperties: 64 });
const EnvVars = Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 256 }), Type.String({ maxLength: 32 * 1024 }), { maxProperties: 256 });
/** E2B's longest sandbox life is 24 hours. */
const TimeoutSec = Type.Integer({ minimum: 0, maximum: 86_400 });

export const NewSandbox = Type.Object({
  templateID: Type.String({ minLength: 1, maxLength: 128 }),
  timeout: Type.Optional(TimeoutSec),
  metadata: Type.Optional(Metadata),
  envVars: Type.Optional(EnvVars),
  autoPause: Type.Optional(Type.Boolean()),
  autoPauseMemory: Type.Optional(Type.Boolean()),
  autoResume: Type.Optional(Type.Object({ enabled: Type.Boolean() })),
  secure: Type.Optional(Type.Boolean()),
  allow_internet_access: Type.Optional(Type.Boolean()),
  mcp: Type.Optional(Type.Unknown()),
  network: Type.Optional(Type.Union([Type.Object({}, { additionalProperties: true }), Type.Null()])),
  iam: Type.Optional(Type.Unknown()),
  volumeMounts: Type.Optional(Type.Array(Type.Unknown(), { maxItems: 64 })),
});
export type NewSandbox = Static<typeof NewSandbox>;

/** What create, connect, resume and each fork child answer. */
export const Sandbox = Type.Object({
  templateID: Type.String(),
  sandboxID: Type.String(),
  alias: Type.Optional(Type.String()),
  clientID: Type.String(),
  envdVersion: Type.String(),
  envdAccessToken: Type.Optional(Type.String()),
  trafficAccessToken: Type.Union([Type.String(), Type.Null()]),
  domain: Type.Union([Type.String(), Type.Null()]),
});
export type Sandbox = Static<typeof Sandbox>;

export const SandboxState = Type.Union([Type.Literal('running'), Type.Literal('paused')]);
export type SandboxState = Static<typeof SandboxState>;

const listedFields = {
  templateID: Type.String(),
  alias: Type.Optional(Type.String()),
  sandboxID: Type.String(),
  clientID: Type.String(),
  startedAt: Type.String(),
  endAt: Type.String(),
  cpuCount: Type.Integer(),
  memoryMB: Type.Integer(),
  diskSizeMB: Type.Integer(),
  metadata: Metadata,
  state: SandboxState,
  envdVersion: Type.String(),
  volumeMounts: Type.Array(Type.Unknown()),
};

export const ListedSandbox = Type.Object(listedFields);
export type ListedSandbox = Static<typeof ListedSandbox>;

export const SandboxDetail = Type.Object({
  ...listedFields,
  envdAccessToken: Type.Optional(Type.String()),
  domain: Type.Union([Type.String(), Type.Null()]),
  lifecycle: Type.Object({ autoResume: Type.Boolean(), onTimeout: Type.Union([Type.Literal('kill'), Type.Literal('pause')]) }),
});
export type SandboxDetail = Static<typeof SandboxDetail>;

export const ListQuery = Type.Object({
  metadata: Type.Optional(Type.String({ maxLength: 8192 })),
  /** The SDK sends the states comma-separated (form style, explode false). */
  state: Type.Optional(Type.String({ pattern: '^(running|paused)(,(running|paused))*$' })),
  startedAfter: Type.Optional(Type.String({ maxLength: 64 })),
  template: Type.Optional(Type.String({ maxLength: 128 })),
  order: Type.Optional(Type.Union([Type.Literal('asc'), Type.Literal('desc')])),
  limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$' })),
  nextToken: Type.Optional(Type.String({ maxLength: 512 })),
});
export type ListQuery = Static<typeof ListQuery>;

export const TimeoutBody = Type.Object({ timeout: TimeoutSec });
export const RefreshBody = Type.Object({ duration: Type.Optional(TimeoutSec) });
export const ConnectBody = Type.Object({ timeout: Type.Optional(TimeoutSec), memory: Type.Optional(Type.Boolean()) });
/** /resume (older SDKs): autoPause is deprecated there and ignored. */
export const ResumeBody = Type.Object({ timeout: Type.Optional(TimeoutSec), autoPause: Type.Optional(Type.Boolean()), memory: Type.Optional(Type.Boolean()) });
export const PauseBody = Type.Object({ memory: Type.Optional(Type.Boolean()) });
export const ForkBody = Type.Object({ count: Type.Optional(Type.Integer({ minimum: 1, maximum: 20 })), timeout: Type.Optional(TimeoutSec) });

export const ForkResult = Type.Object({ sandbox: Type.Optional(Sandbox), error: Type.Optional(E2bError) });

export const SnapshotBody = Type.Object({ name: Type.Optional(Type.String({ minLength: 1, maxLength: 63 })) });
export const SnapshotInfo = Type.Object({ snapshotID: Type.String(), names: Type.Array(Type.String()) });
export type SnapshotInfo = Static<typeof SnapshotInfo>;
export const SnapshotsQuery = Type.Object({
  sandboxID: Type.Optional(Type.String({ maxLength: 128 })),
  name: Type.Optional(Type.String({ maxLength: 128 })),
  limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,4}$' })),
  nextToken: Type.Optional(Type.String({ maxLength: 512 })),
});

export const TemplateIdParams = Type.Object({ templateID: Type.String({ minLength: 1, maxLength: 128 }) });
export const AliasParams = Type.Object({ alias: Type.String({ minLength: 1, maxLength: 128 }) });
export const TemplateAlias = Type.Object({ templateID: Type.String(), public: Type.Boolean() });
export const Template = Type.Object({
  templateID: Type.String(),
  buildID: Type.String(),
  buildStatus: Type.String(),
  cpuCount: Type.Integer(),
  memoryMB: Type.Integer(),
  diskSizeMB: Type.Integer(),
  public: Type.Boolean(),
  aliases: Type.Array(Type.String()),
  names: Type.Array(Type.String()),
  createdAt: Type.String(),
  updatedAt: Type.String(),
  createdBy: Type.Null(),
  lastSpawnedAt: Type.Union([Type.String(), Type.Null()]),
  spawnCount: Type.Integer(),
  buildCount: Type.Integer(),
  envdVersion: Type.String(),
});
export type Template = Static<typeof Template>;

export const LogsQuery = Type.Object({
  start: Type.Optional(Type.String({ pattern: '^[0-9]{1,15}$' })),
  limit: Type.Optional(Type.String({ pattern: '^[0-9]{1,5}$' })),
  cursor: Type.Optional(Type.String({ pattern: '^[0-9]{1,15}$' })),
  direction: Type.Optional(Type.Union([Type.Literal('forward'), Type.Literal('backward')])),
  level: Type.Optional(Type.String({ maxLength: 16 })),
  search: Type.Optional(Type.String({ maxLength: 256 })),
});
export const LogEntry = Type.Object({ timestamp: Type.String(), message: Type.String(), level: Type.String(), fields: Type.Record(Type.String(), Type.String()) });
export const SandboxLogs = Type.Object({ logs: Type.Array(Type.Object({ timestamp: Type.String(), line: Type.String() })), logEntries: Type.Array(LogEntry) });
export const SandboxLogsV2 = Type.Object({ logs: Type.Array(LogEntry) });

export const MetricsQuery = Type.Object({ start: Type.Optional(Type.String({ pattern: '^[0-9]{1,15}$' })), end: Type.Optional(Type.String({ pattern: '^[0-9]{1,15}$' })) });
