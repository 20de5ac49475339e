// Time series as mergeable buckets, so that live 1-minute windows can extend an answer.

import { columnIndex, type QueryAnswer } from "./api";

/** One bucket of a series; `count` and `sum` make the average mergeable. */
export interface Bucket {
  t: number; // window start, epoch ms
  count: number;
  sum: number;
  min: number;
  max: number;
  p95: number | null;
}

/** A closed window of /api/v1/live (`event: window`). */
export interface LiveWindow {
  server_id: string;
  metric: string;
  window_start: string;
  count: number;
  sum: number;
  min: number;
  max: number;
  last: number;
  avg: number | null;
  p95: number | null;
  final?: boolean;
  service: string | null;
  tenant: string | null;
}

/**
 * Where an answer stops: live windows that start after this are new to it. The answer's
 * own last speed window when it has one; else the batch watermark (the answer is all batch).
 * A window of a lagging server that closes after the query, for a minute the answer
 * already covers for the others, is lost until the next reload: a small, temporary gap.
 */
export function answerCutoff(answer: QueryAnswer): number {
  const at = answer.meta.last_speed_window ?? answer.meta.batch_watermark;
  return at ? Date.parse(at) : Number.NEGATIVE_INFINITY;
}

/** The buckets of an answer's rows (its aggregates: count, sum, min, max, p95). */
export function bucketsOf(answer: QueryAnswer, keep?: (row: QueryAnswer["rows"][0]) => boolean) {
  const c = columnIndex(answer);
  const out: Bucket[] = [];
  for (const row of answer.rows) {
    if (keep && !keep(row)) continue;
    out.push({
      t: Date.parse(row[c.window_start] as string),
      count: Number(row[c.count] ?? 0),
      sum: Number(row[c.sum] ?? 0),
      min: Number(row[c.min]),
      max: Number(row[c.max]),
      p95: c.p95 === undefined ? null : (row[c.p95] as number | null),
    });
  }
  return out.sort((a, b) => a.t - b.t);
}

export function average(b: Pick<Bucket, "count" | "sum">): number | null {
  return b.count ? b.sum / b.count : null;
}

/**
 * Adds `w` to the bucket of `step_ms` it falls in (a new bucket after the last one).
 * The p95 of a merged bucket is the larger of the two: without the sketches that is the
 * best bound there is (a union's p95 is never above both of its parts').
 */
export function mergeWindow(buckets: Bucket[], w: LiveWindow, step_ms: number): void {
  const t = Math.floor(Date.parse(w.window_start) / step_ms) * step_ms;
  let i = buckets.length - 1;
  while (i >= 0 && buckets[i].t > t) i--;
  const b = buckets[i];
  if (b && b.t === t) {
    b.count += w.count;
    b.sum += w.sum;
    b.min = Math.min(b.min, w.min);
    b.max = Math.max(b.max, w.max);
    b.p95 = b.p95 === null ? w.p95 : w.p95 === null ? b.p95 : Math.max(b.p95, w.p95);
  } else {
    buckets.splice(i + 1, 0, { t, count: w.count, sum: w.sum, min: w.min, max: w.max, p95: w.p95 });
  }
}

/** Drops the buckets that ended before `ms` (a live range slides). */
export function trimBefore(buckets: Bucket[], ms: number, step_ms: number): void {
  let n = 0;
  while (n < buckets.length && buckets[n].t + step_ms <= ms) n++;
  if (n) buckets.splice(0, n);
}
