/**
 * Firecracker's OpenAPI (Swagger 2.0) description as the judge of every
 * request shoal sends and every response it parses.
 *
 * The spec's `definitions` become JSON Schemas for ajv:
 *  - `#/definitions/X` refs are kept and resolved against the definitions;
 *  - every object schema gets `additionalProperties: false` (Firecracker's
 *    request types are serde `deny_unknown_fields`) unless the spec itself
 *    says `additionalProperties: true` (MMDS contents);
 *  - `required`, `enum`, `minimum`/`maximum` are honoured as they are;
 *    `format: int32/int64` become integer ranges, and the one regex written
 *    as a `format` (MmdsConfig.ipv4_address) becomes an anchored `pattern`;
 *  - Swagger-only keywords (`example`, `readOnly` on `$ref` siblings...) are dropped.
 */
import fs from 'node:fs';
import path from 'node:path';
import Ajv, { type ValidateFunction, type ErrorObject } from 'ajv';
import yaml from 'js-yaml';

export const SPEC_PATH = process.env.SHOAL_FIRECRACKER_SPEC ?? '/work/shared/firecracker/firecracker.yaml';

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = { [k: string]: Json };

interface SwaggerParam { name: string; in: string; required?: boolean; schema?: Obj; type?: string }
interface SwaggerOp { operationId?: string; parameters?: SwaggerParam[]; responses?: Record<string, { schema?: Obj; description?: string }> }
export interface Swagger {
  swagger: string;
  info: { version: string };
  paths: Record<string, Record<string, SwaggerOp>>;
  definitions: Record<string, Obj>;
}

const DROP = new Set(['example', 'xml', 'externalDocs', 'discriminator']);
const KNOWN_FORMATS = new Set(['int32', 'int64']);

function isObj(v: Json | undefined): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Converts one Swagger schema node into a JSON Schema (draft-07) node. */
export function toJsonSchema(node: Json): Json {
  if (Array.isArray(node)) return node.map(toJsonSchema);
  if (!isObj(node)) return node;
  if (typeof node.$ref === 'string') return { $ref: node.$ref }; // siblings of $ref carry no meaning
  const out: Obj = {};
  for (const [k, v] of Object.entries(node)) {
    if (DROP.has(k) || k.startsWith('x-')) continue;
    if (k === 'properties' && isObj(v)) {
      const props: Obj = {};
      for (const [pk, pv] of Object.entries(v)) props[pk] = toJsonSchema(pv);
      out.properties = props;
    } else if (k === 'items' || k === 'additionalProperties') {
      out[k] = typeof v === 'boolean' ? v : toJsonSchema(v);
    } else if (k === 'format') {
      if (v === 'int32') {
        if (out.minimum === undefined && node.minimum === undefined) out.minimum = -2147483648;
        if (node.maximum === undefined) out.maximum = 2147483647;
      } else if (typeof v === 'string' && !KNOWN_FORMATS.has(v) && /[()[\]|\\]/.test(v)) {
        // A regex written as a format (MmdsConfig.ipv4_address): dots are literal dots.
        out.pattern = `^${v.replace(/\./g, '\\.')}$`;
      }
      // int64 and anything else: no extra constraint (JS numbers).
    } else if (k === 'readOnly') {
      continue;
    } else {
      out[k] = v;
    }
  }
  const isObject = out.type === 'object' || out.properties !== undefined;
  if (isObject && out.additionalProperties === undefined) out.additionalProperties = false;
  return out;
}

export interface SpecJudge {
  spec: Swagger;
  ajv: Ajv;
  /** The spec path template matching a concrete path, with its path parameters. */
  matchPath(concrete: string): { template: string; params: Record<string, string> } | null;
  /** Validates a request; problems are returned as strings (empty = valid). */
  checkRequest(method: string, concretePath: string, body: unknown): string[];
  /** Validates a response body for method+path+status (falls back to `default`). */
  checkResponse(method: string, concretePath: string, status: number, body: unknown): string[];
  /** Every (method, template) with a body parameter. */
  operations(): Array<{ method: string; template: string; hasBody: boolean; bodyRequired: boolean }>;
}

function fmtErrors(errs: ErrorObject[] | null | undefined): string[] {
  return (errs ?? []).map((e) => {
    const extra = e.keyword === 'additionalProperties' ? ` (${(e.params as { additionalProperty: string }).additionalProperty})` : '';
    return `${e.instancePath || '/'} ${e.message ?? e.keyword}${extra}`;
  });
}

let cached: SpecJudge | null = null;

export function loadSpecJudge(specPath = SPEC_PATH): SpecJudge {
  if (cached && specPath === SPEC_PATH) return cached;
  const spec = yaml.load(fs.readFileSync(specPath, 'utf8')) as Swagger;
  const definitions: Obj = {};
  for (const [name, def] of Object.entries(spec.definitions)) definitions[name] = toJsonSchema(def);
  const ajv = new Ajv({ allErrors: true, strict: true, strictTypes: false });
  ajv.addSchema({ $id: 'fc', definitions }, 'fc');

  const compiled = new Map<string, ValidateFunction>();
  const compile = (schema: Obj): ValidateFunction => {
    const key = JSON.stringify(schema);
    let v = compiled.get(key);
    if (!v) {
      // Refs are '#/definitions/X'; rebase them onto the 'fc' document.
      const rebased = JSON.parse(key.replace(/"#\/definitions\//g, '"fc#/definitions/')) as Obj;
      v = ajv.compile(toJsonSchema(rebased) as Obj);
      compiled.set(key, v);
    }
    return v;
  };

  const templates = Object.keys(spec.paths);
  const matchPath = (concrete: string): { template: string; params: Record<string, string> } | null => {
    for (const t of templates) {
      const names: string[] = [];
      const re = new RegExp(`^${t.replace(/\{([^}]+)\}/g, (_m, n: string) => { names.push(n); return '([^/]+)'; })}$`);
      const m = re.exec(concrete);
      if (m) {
        const params: Record<string, string> = {};
        names.forEach((n, i) => { params[n] = decodeURIComponent(m[i + 1]!); });
        return { template: t, params };
      }
    }
    return null;
  };

  const opFor = (method: string, concrete: string): { op: SwaggerOp; template: string; params: Record<string, string> } | string => {
    const m = matchPath(concrete);
    if (!m) return `path ${concrete} is not in the spec`;
    const op = spec.paths[m.template]![method.toLowerCase()];
    if (!op) return `${method} ${m.template} is not in the spec`;
    return { op, template: m.template, params: m.params };
  };

  const checkRequest = (method: string, concrete: string, body: unknown): string[] => {
    const found = opFor(method, concrete);
    if (typeof found === 'string') return [found];
    const bodyParam = (found.op.parameters ?? []).find((p) => p.in === 'body');
    const problems: string[] = [];
    if (!bodyParam) {
      if (body !== undefined) problems.push(`${method} ${found.template} takes no body`);
      return problems;
    }
    if (body === undefined) {
      if (bodyParam.required) problems.push(`${method} ${found.template} requires a body`);
      return problems;
    }
    const v = compile(bodyParam.schema!);
    if (!v(body)) problems.push(...fmtErrors(v.errors).map((e) => `${method} ${found.template}: ${e}`));
    // Device ids in the path: Firecracker's checked_id (v1.16.1 src/firecracker/src/api_server/
    // parsed_request.rs) refuses an empty id and any character that is not `_` or alphanumeric.
    for (const [name, value] of Object.entries(found.params)) {
      if (!/(^|_)id$/.test(name)) continue;
      if (!/^[\p{Alphabetic}\p{N}_]+$/u.test(value)) problems.push(`${method} ${found.template}: ${name} ${JSON.stringify(value)} is not alphanumeric/_ (Firecracker: InvalidID)`);
    }
    // Path parameters echoed in the body must agree (Firecracker rejects a mismatch).
    if (body && typeof body === 'object') {
      for (const [name, value] of Object.entries(found.params)) {
        const inBody = (body as Record<string, unknown>)[name];
        if (inBody !== undefined && inBody !== value) problems.push(`${method} ${found.template}: path ${name}=${value} but body says ${String(inBody)}`);
      }
    }
    // SnapshotLoadParams: "Exactly one of the two mem_* fields must be present".
    if (found.template === '/snapshot/load' && body && typeof body === 'object') {
      const b = body as Record<string, unknown>;
      if ((b.mem_file_path === undefined) === (b.mem_backend === undefined)) {
        problems.push('PUT /snapshot/load: exactly one of mem_file_path and mem_backend must be present');
      }
    }
    return problems;
  };

  const checkResponse = (method: string, concrete: string, status: number, body: unknown): string[] => {
    const found = opFor(method, concrete);
    if (typeof found === 'string') return [found];
    const responses = found.op.responses ?? {};
    const r = responses[String(status)] ?? responses.default;
    if (!r) return [`${method} ${found.template}: status ${status} is not a documented response`];
    if (!r.schema) return body === undefined ? [] : [`${method} ${found.template} ${status}: documented without a body`];
    const v = compile(r.schema);
    return v(body) ? [] : fmtErrors(v.errors).map((e) => `${method} ${found.template} ${status}: ${e}`);
  };

  const operations = (): Array<{ method: string; template: string; hasBody: boolean; bodyRequired: boolean }> => {
    const out: Array<{ method: string; template: string; hasBody: boolean; bodyRequired: boolean }> = [];
    for (const [t, ops] of Object.entries(spec.paths)) {
      for (const [m, op] of Object.entries(ops)) {
        const bp = (op.parameters ?? []).find((p) => p.in === 'body');
        out.push({ method: m.toUpperCase(), template: t, hasBody: !!bp, bodyRequired: !!bp?.required });
      }
    }
    return out;
  };

  const judge: SpecJudge = { spec, ajv, matchPath, checkRequest, checkResponse, operations };
  if (specPath === SPEC_PATH) cached = judge;
  return judge;
}

export function specVersion(specPath = SPEC_PATH): string {
  return loadSpecJudge(specPath).spec.info.version;
}

export const specDir = path.dirname(SPEC_PATH);
