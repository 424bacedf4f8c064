/**
 * A scriptable fault-injecting HTTP proxy for tests: it sits on 127.0.0.1 between coffer and the
 * throwaway RGW (coffer is pointed at it with AWS_ENDPOINT_URL_S3) and forwards every request
 * byte-for-byte (same method, path, raw headers — the Host header too, so SigV4 signatures stay
 * valid — and the same response), except the requests that match a scripted {@link FaultRule}:
 *
 * - `status`: answer with an S3 XML error (e.g. 503 SlowDown, 500 InternalError, 403 AccessDenied)
 *   after reading the request body, without forwarding;
 * - `reset-request`: forward, but reset the TCP connection (RST) after N request-body bytes;
 * - `reset-response` / `truncate-response`: forward, then reset (RST) or close (FIN) the client
 *   connection after N response-body bytes (a dropped or truncated download);
 * - `stall-response`: forward, then stop sending (socket left open) after N response-body bytes;
 * - `latency`: wait before forwarding;
 * - `stall`: read the request and never answer (the socket stays open until the client gives up);
 * - `lost-answer`: forward the whole request (the server acts on it), then drop the server's
 *   answer: stay silent (`how: 'stall'`, the default) or reset the client connection (`'reset'`).
 *
 * Every request is recorded (S3 operation, method, path, fault applied) so a test can prove that
 * a fault really fired and count retries.
 */
import * as http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

/** S3 operation names the proxy recognises from method + query (path-style addressing). */
export type S3Op =
  | 'CreateMultipartUpload'
  | 'UploadPart'
  | 'CompleteMultipartUpload'
  | 'AbortMultipartUpload'
  | 'ListMultipartUploads'
  | 'PutObject'
  | 'GetObject'
  | 'HeadObject'
  | 'DeleteObject'
  | 'ListObjects'
  | 'Other';

export type Fault =
  | { kind: 'status'; status: number; code: string }
  | { kind: 'reset-request'; afterBytes: number }
  | { kind: 'reset-response'; afterBytes: number }
  | { kind: 'truncate-response'; afterBytes: number }
  | { kind: 'stall-response'; afterBytes: number }
  | { kind: 'latency'; ms: number }
  | { kind: 'stall' }
  | { kind: 'lost-answer'; how?: 'stall' | 'reset' };

export interface FaultRule {
  /** Which requests: an S3 operation, optionally also a method and a path pattern. */
  op?: S3Op;
  method?: string;
  path?: RegExp;
  /** Only once a request of this operation was seen (e.g. ListObjects after the manifest PutObject). */
  afterOp?: S3Op;
  /** Apply from the nth matching request on (1-based; default 1). */
  nth?: number;
  /** How many matching requests get the fault (default 1; Infinity = persistent). */
  times?: number;
  fault: Fault;
}

export interface ProxyEvent {
  op: S3Op;
  method: string;
  path: string;
  /** `fault.kind` applied to this request, or 'forwarded'. */
  outcome: string;
  /** Index of the rule that matched, if any. */
  rule?: number;
  /** The request's Range header (ranged GETs). */
  range?: string;
  /** Response body bytes forwarded to the client so far (counted as they pass). */
  responseBytes: number;
  /** Request body bytes forwarded upstream so far (counted as they pass). */
  requestBytes?: number;
  /** The x-amz-copy-source header (UploadPartCopy, CopyObject): the request copies server-side. */
  copySource?: string;
  /** When the request arrived, and when its response was sent whole (Date.now()). */
  at: number;
  doneAt?: number;
}

interface ActiveRule extends FaultRule {
  seen: number;
  fired: number;
}

/** Classifies a path-style S3 request. */
export function classify(method: string, url: string): S3Op {
  const u = new URL(url, 'http://x');
  const q = u.searchParams;
  const objectPath = u.pathname.split('/').filter(Boolean).length >= 2;
  if (method === 'POST' && q.has('uploads')) return 'CreateMultipartUpload';
  if (method === 'PUT' && q.has('partNumber') && q.has('uploadId')) return 'UploadPart';
  if (method === 'POST' && q.has('uploadId')) return 'CompleteMultipartUpload';
  if (method === 'DELETE' && q.has('uploadId')) return 'AbortMultipartUpload';
  if (method === 'GET' && q.has('uploads')) return 'ListMultipartUploads';
  if (method === 'PUT' && objectPath) return 'PutObject';
  if (method === 'GET' && objectPath) return 'GetObject';
  if (method === 'HEAD' && objectPath) return 'HeadObject';
  if (method === 'DELETE' && objectPath) return 'DeleteObject';
  if (method === 'GET') return 'ListObjects';
  return 'Other';
}

export class FaultProxy {
  readonly events: ProxyEvent[] = [];
  private rules: ActiveRule[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  private server: http.Server | undefined;
  private upstream: URL;

  constructor(upstream: string) {
    this.upstream = new URL(upstream);
  }

  /** The endpoint URL to give coffer (AWS_ENDPOINT_URL_S3). */
  endpoint = '';

  /** Replaces the fault script (counters start again). */
  script(rules: FaultRule[]): void {
    this.rules = rules.map((r) => ({ ...r, seen: 0, fired: 0 }));
  }

  /** How many times rule `i` of the current script was applied. */
  fired(i: number): number {
    return this.rules[i]?.fired ?? 0;
  }

  /** Recorded requests of one operation. */
  requests(op: S3Op): ProxyEvent[] {
    return this.events.filter((e) => e.op === op);
  }

  async start(): Promise<this> {
    this.server = http.createServer((req, res) => this.handle(req, res));
    this.server.keepAliveTimeout = 5000;
    this.server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.endpoint = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    this.agent.destroy();
    if (this.server) await new Promise<void>((resolve) => this.server!.close(() => resolve()));
  }

  /** Every rule counts every request it matches; the first eligible one is applied. */
  private pick(op: S3Op, method: string, path: string): { rule: ActiveRule; index: number } | undefined {
    let hit: { rule: ActiveRule; index: number } | undefined;
    for (let i = 0; i < this.rules.length; i++) {
      const r = this.rules[i]!;
      if (r.op !== undefined && r.op !== op) continue;
      if (r.afterOp !== undefined && !this.events.some((e) => e.op === r.afterOp)) continue;
      if (r.method !== undefined && r.method !== method) continue;
      if (r.path !== undefined && !r.path.test(path)) continue;
      r.seen++;
      if (hit || r.seen < (r.nth ?? 1) || r.fired >= (r.times ?? 1)) continue;
      r.fired++;
      hit = { rule: r, index: i };
    }
    return hit;
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    // A client that gives up (timeout, abort) must not crash the proxy.
    res.on('error', () => undefined);
    req.on('error', () => undefined);
    const method = req.method ?? 'GET';
    const url = req.url ?? '/';
    const op = classify(method, url);
    const hit = this.pick(op, method, url.split('?')[0]!);
    const fault = hit?.rule.fault;
    const range = req.headers.range;
    const event: ProxyEvent = { op, method, path: url.split('?')[0]!, outcome: fault?.kind ?? 'forwarded', ...(hit ? { rule: hit.index } : {}), ...(range ? { range } : {}), ...(typeof req.headers['x-amz-copy-source'] === 'string' ? { copySource: req.headers['x-amz-copy-source'] } : {}), responseBytes: 0, requestBytes: 0, at: Date.now() };
    this.events.push(event);
    res.on('finish', () => (event.doneAt = Date.now()));
    if (!fault) return this.forward(req, res, {}, event);
    switch (fault.kind) {
      case 'status': {
        req.resume();
        req.on('end', () => {
          const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${fault.code}</Code><Message>injected by the fault proxy</Message><RequestId>fault</RequestId></Error>`;
          res.writeHead(fault.status, { 'content-type': 'application/xml', 'content-length': Buffer.byteLength(body) });
          res.end(body);
        });
        return;
      }
      case 'stall':
        req.resume(); // read everything, answer nothing
        return;
      case 'latency': {
        req.pause();
        setTimeout(() => this.forward(req, res, {}, event), fault.ms);
        return;
      }
      case 'reset-request':
        return this.forward(req, res, { requestBytes: fault.afterBytes }, event);
      case 'reset-response':
        return this.forward(req, res, { responseBytes: fault.afterBytes, how: 'reset' }, event);
      case 'truncate-response':
        return this.forward(req, res, { responseBytes: fault.afterBytes, how: 'close' }, event);
      case 'stall-response':
        return this.forward(req, res, { responseBytes: fault.afterBytes, how: 'stall' }, event);
      case 'lost-answer':
        return this.forward(req, res, { dropResponse: fault.how ?? 'stall' }, event);
    }
  }

  private forward(
    req: http.IncomingMessage,
    res: http.ServerResponse,
    cut: { requestBytes?: number; responseBytes?: number; how?: 'reset' | 'close' | 'stall'; dropResponse?: 'stall' | 'reset' } = {},
    event?: ProxyEvent,
  ): void {
    const headers: Record<string, string | string[]> = {};
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const k = req.rawHeaders[i]!;
      const v = req.rawHeaders[i + 1]!;
      const prev = headers[k];
      headers[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
    }
    const up = http.request({
      host: this.upstream.hostname,
      port: this.upstream.port,
      method: req.method,
      path: req.url,
      headers,
      agent: this.agent,
    });
    let cutting = false;
    const kill = (how: 'reset' | 'close' | 'stall'): void => {
      cutting = true;
      up.destroy();
      if (how === 'stall') return; // the client socket stays open, silent
      const s = req.socket;
      if (how === 'reset') s.resetAndDestroy();
      else s.destroy();
    };
    up.on('error', () => {
      if (cutting) return;
      if (!res.headersSent) req.socket.destroy();
      else res.destroy();
    });
    up.on('response', (ur) => {
      if (cut.dropResponse) {
        // The server has answered (it acted on the request): the answer never reaches the client.
        ur.resume();
        cutting = true;
        if (cut.dropResponse === 'reset') req.socket.resetAndDestroy();
        return;
      }
      res.writeHead(ur.statusCode ?? 502, ur.statusMessage, ur.rawHeaders);
      let sent = 0;
      ur.on('data', (chunk: Buffer) => {
        if (cut.responseBytes !== undefined) {
          const room = cut.responseBytes - sent;
          if (room <= 0) return;
          if (chunk.length >= room) {
            sent += room;
            if (event) event.responseBytes += room;
            cutting = true; // the upstream errors that follow are ours
            res.write(chunk.subarray(0, room), () => kill(cut.how ?? 'reset'));
            ur.destroy();
            return;
          }
        }
        sent += chunk.length;
        if (event) event.responseBytes += chunk.length;
        if (!res.write(chunk)) {
          ur.pause();
          res.once('drain', () => ur.resume());
        }
      });
      ur.on('error', () => {
        if (!cutting) res.destroy();
      });
      ur.on('end', () => {
        if (cut.responseBytes === undefined || sent < cut.responseBytes) res.end();
      });
    });
    let received = 0;
    req.on('data', (chunk: Buffer) => {
      if (event) event.requestBytes = (event.requestBytes ?? 0) + chunk.length;
      if (cut.requestBytes !== undefined) {
        received += chunk.length;
        if (received >= cut.requestBytes) {
          kill('reset');
          return;
        }
      }
      if (!up.write(chunk)) {
        req.pause();
        up.once('drain', () => req.resume());
      }
    });
    req.on('end', () => up.end());
    req.on('error', () => up.destroy());
    req.resume();
  }
}

/** Starts a proxy in front of `upstream` (the RGW endpoint). */
export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  return new FaultProxy(upstream).start();
}
