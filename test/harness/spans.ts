/** Length of the union of [start, end) spans: the tests' own count of distinct bytes fetched (not src's). */
export function unionLength(spans: ReadonlyArray<readonly [number, number]>): number {
  let total = 0;
  let end = -1;
  for (const [a, b] of [...spans].sort((x, y) => x[0] - y[0])) {
    if (b <= end) continue;
    total += b - Math.max(a, end);
    end = b;
  }
  return total;
}
