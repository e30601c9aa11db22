/** Small IPv4 helpers: strict parsing (no octal, no shorthand), CIDRs, overlap. */

const OCTET = /^(0|[1-9][0-9]{0,2})$/;

export function parseIp(s: string): number | undefined {
  if (typeof s !== 'string') return undefined;
  const parts = s.split('.');
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    if (!OCTET.test(p)) return undefined;
    const o = Number(p);
    if (o > 255) return undefined;
    n = n * 256 + o;
  }
  return n;
}

export const isIp = (s: string): boolean => parseIp(s) !== undefined;

export function ipToString(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

export interface Cidr {
  /** Network address (host bits cleared). */
  base: number;
  prefix: number;
  /** Canonical text, e.g. "10.0.0.0/8". */
  text: string;
}

const size = (prefix: number): number => 2 ** (32 - prefix);

/** Parse "a.b.c.d/n" (or a bare address = /32). `strict` refuses host bits set. */
export function parseCidr(s: string, o: { strict?: boolean } = {}): Cidr | undefined {
  if (typeof s !== 'string') return undefined;
  const [addr, pfx, extra] = s.split('/');
  if (extra !== undefined || addr === undefined) return undefined;
  const ip = parseIp(addr);
  if (ip === undefined) return undefined;
  let prefix = 32;
  if (pfx !== undefined) {
    if (!/^(0|[1-9][0-9]?)$/.test(pfx)) return undefined;
    prefix = Number(pfx);
    if (prefix > 32) return undefined;
  }
  const base = ip - (ip % size(prefix));
  if (o.strict && base !== ip) return undefined;
  return { base, prefix, text: `${ipToString(base)}/${prefix}` };
}

export const cidrContains = (c: Cidr, ip: number): boolean => ip >= c.base && ip < c.base + size(c.prefix);

export const cidrsOverlap = (a: Cidr, b: Cidr): boolean => a.base < b.base + size(b.prefix) && b.base < a.base + size(a.prefix);

export const broadcast = (c: Cidr): number => c.base + size(c.prefix) - 1;
