/**
 * Clients of a TLS service whose certificate a private CA signed (or the self-signed development
 * one): a `fetch` that trusts that CA. Node 20's global fetch cannot take a CA per call without
 * the `undici` package, so this one speaks HTTP/1.1 over `node:https` and answers a standard
 * `Response` (streamed body, status, headers). Used by the SDK (`ca` option; the CLI's `--ca` /
 * MVM_CA_CERT); the WebSocket calls pass the same CA to `ws`.
 */
import { request } from 'node:https';
import { Readable } from 'node:stream';

type FetchInit = RequestInit & { duplex?: string };

/** A fetch that trusts `ca` (PEM) for https: URLs; http: URLs go to the global fetch. */
export function fetchTrusting(ca: string | Buffer): typeof fetch {
  return (async (input: string | URL | Request, init: FetchInit = {}): Promise<Response> => {
    const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
    if (url.protocol !== 'https:') return fetch(input, init);
    const headers = new Headers(init.headers);
    const body = init.body;
    return new Promise<Response>((resolve, reject) => {
      const req = request(url, { method: init.method ?? 'GET', headers: Object.fromEntries(headers), ca, ...(init.signal ? { signal: init.signal } : {}) }, (res) => {
        const h = new Headers();
        for (const [k, v] of Object.entries(res.headers)) {
          if (Array.isArray(v)) for (const x of v) h.append(k, x);
          else if (v !== undefined) h.set(k, v);
        }
        const status = res.statusCode ?? 502;
        const nullBody = status === 204 || status === 304 || init.method === 'HEAD';
        resolve(new Response(nullBody ? null : (Readable.toWeb(res) as ReadableStream), { status, statusText: res.statusMessage ?? '', headers: h }));
      });
      req.on('error', (e) => reject(Object.assign(new TypeError('fetch failed'), { cause: e })));
      if (body === undefined || body === null) req.end();
      else if (typeof body === 'string' || body instanceof Uint8Array) req.end(body);
      else if (body instanceof ReadableStream) Readable.fromWeb(body as import('node:stream/web').ReadableStream).pipe(req);
      else if (typeof (body as NodeJS.ReadableStream).pipe === 'function') (body as NodeJS.ReadableStream).pipe(req);
      else req.end(Buffer.from(body as ArrayBuffer));
    });
  }) as typeof fetch;
}
