/**
 * The chaos harness's seeded PRNG (mulberry32): a 32-bit seed gives the same sequence on every
 * machine and Node version, so a seed names one iteration exactly (operations, victim, kill delay).
 */
export interface Rng {
  /** A float in [0, 1). */
  next(): number;
  /** An integer in [lo, hi] (both included). */
  int(lo: number, hi: number): number;
  /** true with probability p. */
  chance(p: number): boolean;
  /** One element (the array must not be empty). */
  pick<T>(items: readonly T[]): T;
  /** One element by weight ([item, weight] pairs; weights > 0). */
  weighted<T>(items: ReadonlyArray<readonly [T, number]>): T;
}

export function rng(seed: number): Rng {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const r: Rng = {
    next,
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    chance: (p) => next() < p,
    pick: (items) => items[Math.floor(next() * items.length)]!,
    weighted: (items) => {
      const total = items.reduce((s, [, w]) => s + w, 0);
      let x = next() * total;
      for (const [item, w] of items) {
        if ((x -= w) < 0) return item;
      }
      return items[items.length - 1]![0];
    },
  };
  return r;
}
