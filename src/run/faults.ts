/**
 * Fault points for the test suite: `COFFER_TEST_FAULTS="name=value,…"` in coffer's environment.
 * Nothing sets it in normal use; each point is named in docs/reliability.md with the test that
 * uses it. A fault point only delays or breaks what a real failure could: it never makes a run
 * look better than it is.
 *
 * - `delay-reader-ms=N`: after a backup's children are spawned, wait N ms before the stream
 *   graph reads their output (every child has exited by then for a small database: the
 *   supervisor must have kept their output).
 * - `delete-earlier-backup=1`: a DELIBERATELY BROKEN cleanup, to prove that the reliability
 *   suite's data-loss check can fail: a backup run that fails deletes the manifest of the newest
 *   earlier backup of its database (from the tier-choice listing) in its cleanup path.
 *   test/reliability/network.test.ts ("the data-loss check detects a broken cleanup") uses it.
 * - `tap-thread-at=N`: not a fault: backups of databases of N bytes or more (default 256 MiB)
 *   carry the dump to pzstd by a worker thread between real pipes (src/pipeline/dump-tap-thread.ts)
 *   instead of node's streams, so that small test databases take that path too.
 *   test/backup/dump-tap-thread.test.ts uses it.
 * - `stall-wal-push=<stage>`: wal-push writes `fault: stalled at <stage>` on stderr and waits
 *   (until it is killed) at that stage: `listed` (the name was listed, nothing encoded yet),
 *   `encoded` (compressed and encrypted, not yet stored), `stored` (putBytes returned, before the
 *   re-listing and exit 0). test/physical/wal.test.ts kills it there with SIGKILL.
 * - `hold-wal-push=<stage>[+<stage>…]`: as `stall-wal-push` (`listed`, `stored`), but it goes on
 *   once the file `$COFFER_TEST_RELEASE.<stage>` exists: test/physical/wal.test.ts orders two
 *   racing pushes with it.
 * - `hold-rekey=<stage>[+<stage>…]`: rekey holds as `hold-wal-push` at `selected` (the backups
 *   chosen, no lock taken yet) or `locked` (the database's lock held, before selecting again):
 *   test/rekey/rekey-file.test.ts ("concurrent rekeys of one backup") orders two rekeys with it.
 */
const raw = process.env.COFFER_TEST_FAULTS ?? '';
const points = new Map<string, string>();
for (const part of raw.split(',')) {
  const [k, v] = part.split('=');
  if (k) points.set(k.trim(), (v ?? '').trim());
}

/** The number set for a fault point, or 0. */
export function faultNumber(name: string): number {
  const n = Number(points.get(name) ?? 0);
  return Number.isFinite(n) && n > 0 ? n : 0;
}

/** Stalls forever (until killed) when the fault point `name` is set to `stage`, saying so on stderr first. */
export async function stallAt(name: string, stage: string): Promise<void> {
  if (points.get(name) !== stage) return;
  process.stderr.write(`fault: stalled at ${stage}\n`);
  await new Promise<never>(() => setInterval(() => undefined, 60_000));
}

/** Holds (polling) when the fault point `name` names `stage`, until the file `$COFFER_TEST_RELEASE.<stage>` exists; says so on stderr first. */
export async function holdAt(name: string, stage: string): Promise<void> {
  if (!(points.get(name) ?? '').split('+').includes(stage)) return;
  const release = process.env.COFFER_TEST_RELEASE === undefined ? undefined : `${process.env.COFFER_TEST_RELEASE}.${stage}`;
  process.stderr.write(`fault: held at ${stage}\n`);
  const { existsSync } = await import('node:fs');
  while (release === undefined || !existsSync(release)) await new Promise((r) => setTimeout(r, 20));
}
