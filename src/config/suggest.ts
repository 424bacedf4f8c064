/** Levenshtein distance (insert, delete, substitute), for "did you mean" suggestions. */
export function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

const normal = (s: string): string => s.replace(/[-_]/g, '').toLowerCase();

/**
 * The known key closest to `key`: the same name in another spelling (`keep_daily`,
 * `KeepDaily` → `keepDaily`), else the nearest by edit distance if it is close enough
 * (at most a third of the key's length, minimum 2). Undefined when nothing is close.
 */
export function suggestKey(key: string, known: string[]): string | undefined {
  const same = known.find((k) => normal(k) === normal(key));
  if (same !== undefined) return same;
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = editDistance(normal(key), normal(k));
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(key.length / 3)) ? best : undefined;
}
