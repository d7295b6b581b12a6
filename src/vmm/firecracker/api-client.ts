/**
 * HTTP/1.1 over Firecracker's API Unix socket. JSON in, JSON out; every
 * non-2xx answer becomes a FirecrackerApiError carrying Firecracker's
 * `fault_message` (the spec's `Error` definition).
 */
import http from 'node:http';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ApiRequest, FirecrackerVersionBody, HttpMethod, InstanceInfo } from './requests';

export class FirecrackerApiError extends Error {
  constructor(
    readonly method: string,
    readonly path: string,
    readonly status: number,
    readonly faultMessage: string,
  ) {
    super(`Firecracker ${method} ${path} failed (HTTP ${status}): ${faultMessage}`);
    this.name = 'FirecrackerApiError';
  }
}

export interface ApiResponse<T = unknown> {
  status: number;
  body: T | undefined;
}

export interface ApiClientOptions {
  /** Per-request timeout (default 10 s; snapshot create/load of big VMs can take a while). */
  timeoutMs?: number;
}

export class FirecrackerApiClient {
  private readonly timeoutMs: number;

  constructor(readonly socketPath: string, opts: ApiClientOptions = {}) {
    this.timeoutMs = opts.timeoutMs ?? 10_000;
  }

  /** Sends one request; resolves on 2xx with the parsed JSON body (if any), rejects otherwise. */
  request<T = unknown>(method: HttpMethod, path: string, body?: unknown, timeoutMs = this.timeoutMs): Promise<ApiResponse<T>> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const headers: Record<string, string | number> = { Accept: 'application/json' };
    if (payload) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = payload.length;
    }
    return new Promise<ApiResponse<T>>((resolve, reject) => {
      const req = http.request(
        { socketPath: this.socketPath, method, path, headers, agent: false, host: 'localhost' },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            clearTimeout(timer);
            const status = res.statusCode ?? 0;
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown;
            if (text.trim() !== '') {
              try {
                parsed = JSON.parse(text);
              } catch {
                parsed = undefined;
              }
            }
            if (status >= 200 && status < 300) {
              resolve({ status, body: parsed as T | undefined });
              return;
            }
            const fault =
              parsed && typeof parsed === 'object' && typeof (parsed as { fault_message?: unknown }).fault_message === 'string'
                ? (parsed as { fault_message: string }).fault_message
                : text.trim() || res.statusMessage || 'no error message';
            reject(new FirecrackerApiError(method, path, status, fault));
          });
        },
      );
      const timer = setTimeout(() => {
        req.destroy(new Error(`Firecracker ${method} ${path}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      req.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      if (payload) req.write(payload);
      req.end();
    });
  }

  /** Sends a built request, discarding the (empty, 204) answer. */
  async send(r: ApiRequest, timeoutMs?: number): Promise<void> {
    await this.request(r.method, r.path, r.body, timeoutMs);
  }

  async get<T>(path: string): Promise<T> {
    const res = await this.request<T>('GET', path);
    if (res.body === undefined) throw new Error(`Firecracker GET ${path}: empty answer`);
    return res.body;
  }

  /** The binary's version string, e.g. "1.16.1". */
  async version(): Promise<string> {
    const v = await this.get<FirecrackerVersionBody>('/version');
    return v.firecracker_version;
  }

  describe(): Promise<InstanceInfo> {
    return this.get<InstanceInfo>('/');
  }
}

/** Resolves once something accepts connections on the Unix socket at socketPath. */
function tryConnect(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createConnection(socketPath);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export interface WaitOptions {
  timeoutMs: number;
  /** Polling interval (default 10 ms). */
  intervalMs?: number;
  /** Stops waiting early (e.g. the VMM exited); its message becomes the error. */
  abortReason?: () => string | null;
}

/** Waits for the API socket to accept connections, or rejects after timeoutMs. */
export async function waitForSocket(socketPath: string, opts: WaitOptions): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  const interval = opts.intervalMs ?? 10;
  for (;;) {
    const reason = opts.abortReason?.();
    if (reason) throw new Error(reason);
    if (await tryConnect(socketPath)) return;
    if (Date.now() >= deadline) {
      throw new Error(`Firecracker's API socket ${socketPath} did not appear within ${opts.timeoutMs} ms`);
    }
    await sleep(interval);
  }
}
