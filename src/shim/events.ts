/**
 * Task events to containerd, as its shims publish them: containerd's Events/Forward on its ttrpc
 * socket (TTRPC_ADDRESS), an Envelope with the namespace, the topic and the event as an Any
 * whose type URL is the bare message name (what containerd's typeurl writes and reads). Events
 * go out one at a time in order, each with a few retries; a containerd that is away does not
 * hold up the task (a bounded queue drops the oldest).
 */
import { create, toBinary, type DescMessage, type MessageShape } from '@bufbuild/protobuf';
import { AnySchema, timestampFromDate } from '@bufbuild/protobuf/wkt';
import { EnvelopeSchema, ForwardRequestSchema } from './gen/containerd/ttrpc-events_pb';
import { TtrpcClient } from './ttrpc/client';

export const TOPICS = {
  create: '/tasks/create',
  start: '/tasks/start',
  exit: '/tasks/exit',
  delete: '/tasks/delete',
  execAdded: '/tasks/exec-added',
  execStarted: '/tasks/exec-started',
  oom: '/tasks/oom',
} as const;

const MAX_QUEUED = 1024;

export class EventPublisher {
  private readonly queue: Array<{ topic: string; typeUrl: string; value: Uint8Array }> = [];
  private client: TtrpcClient | undefined;
  private draining: Promise<void> | undefined;

  constructor(
    private readonly address: string,
    private readonly namespace: string,
    private readonly log: (line: string) => void,
  ) {}

  publish<D extends DescMessage>(topic: string, schema: D, event: MessageShape<D>): void {
    if (this.address === '') return;
    if (this.queue.length >= MAX_QUEUED) this.queue.shift();
    this.queue.push({ topic, typeUrl: schema.typeName, value: toBinary(schema, event) });
    this.draining ??= this.drain().finally(() => { this.draining = undefined; });
  }

  /** Resolves once everything queued so far was sent (or given up on). */
  async flush(): Promise<void> {
    while (this.draining) await this.draining;
  }

  close(): void {
    this.client?.close();
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const item = this.queue.shift()!;
      const request = create(ForwardRequestSchema, {
        envelope: create(EnvelopeSchema, {
          timestamp: timestampFromDate(new Date()),
          namespace: this.namespace,
          topic: item.topic,
          event: create(AnySchema, { typeUrl: item.typeUrl, value: item.value }),
        }),
      });
      const payload = toBinary(ForwardRequestSchema, request);
      for (let attempt = 0; attempt < 3; attempt++) {
        try {
          this.client ??= await TtrpcClient.connect(this.address, 2000);
          await this.client.call('containerd.services.events.ttrpc.v1.Events', 'Forward', payload, 5000);
          break;
        } catch (err) {
          this.client?.close();
          this.client = undefined;
          if (attempt === 2) this.log(`publishing ${item.topic} failed: ${(err as Error).message}`);
          else await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
        }
      }
    }
  }
}

/** A message's Timestamp for `date`. */
export const timestamp = timestampFromDate;

export type { MessageShape };
