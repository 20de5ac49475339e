// The time range: a preset ending now (live) or a custom start and end.

export const PRESETS: [string, number][] = [
  ["15m", 900],
  ["1h", 3600],
  ["6h", 21600],
  ["24h", 86400],
  ["7d", 604800],
  ["30d", 2592000],
  ["1y", 31536000],
];

/** The API's `step=auto` choices (fleetlens.serving.tiers.NICE_STEPS), in seconds. */
const NICE_STEPS = [60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800];

export type TimeRange =
  | { kind: "preset"; key: string; span_s: number }
  | { kind: "custom"; start: Date; end: Date | null };

export function preset(key: string): TimeRange {
  const found = PRESETS.find(([k]) => k === key) ?? PRESETS[3];
  return { kind: "preset", key: found[0], span_s: found[1] };
}

/** Whether the range ends now: only then do live windows extend it. */
export function isLive(range: TimeRange): boolean {
  return range.kind === "preset" || range.end === null;
}

/** Its length now, in seconds. */
export function spanSeconds(range: TimeRange): number {
  if (range.kind === "preset") return range.span_s;
  return ((range.end?.getTime() ?? Date.now()) - range.start.getTime()) / 1000;
}

/** `start` and `end` for /api/v1/query: relative for presets, so the server's clock decides. */
export function apiBounds(range: TimeRange): { start: string; end: string } {
  if (range.kind === "preset") return { start: `now-${range.key}`, end: "now" };
  return { start: range.start.toISOString(), end: range.end?.toISOString() ?? "now" };
}

/** The first start of the range now, in epoch ms (live windows before it fall off). */
export function startMs(range: TimeRange): number {
  return range.kind === "preset" ? Date.now() - range.span_s * 1000 : range.start.getTime();
}

/** The smallest API step that gives at most `buckets` buckets over `span_s`. */
export function niceStep(span_s: number, buckets: number): number {
  return NICE_STEPS.find((s) => s >= span_s / buckets) ?? NICE_STEPS[NICE_STEPS.length - 1];
}

/** The heatmap's bucket: hours from 6 h to a week, coarser beyond, finer below. */
export function heatmapStep(span_s: number): number {
  if (span_s <= 21600) return niceStep(span_s, 36);
  if (span_s <= 8 * 86400) return 3600;
  return span_s <= 31 * 86400 ? 21600 : 86400;
}

/** `5m`, `1h`, `1d` (the API's own spelling). */
export function formatStep(seconds: number): string {
  for (const [unit, size] of [
    ["w", 604800],
    ["d", 86400],
    ["h", 3600],
    ["m", 60],
  ] as const) {
    if (seconds % size === 0) return `${seconds / size}${unit}`;
  }
  return `${seconds}s`;
}

/** The range as the hash keeps it: `24h`, or `2026-01-01T00:00Z~now`. */
export function encodeRange(range: TimeRange): string {
  if (range.kind === "preset") return range.key;
  return `${range.start.toISOString()}~${range.end?.toISOString() ?? "now"}`;
}

export function decodeRange(text: string | null): TimeRange {
  if (text && text.includes("~")) {
    const [a, b] = text.split("~");
    const start = new Date(a);
    const end = b === "now" ? null : new Date(b);
    if (!Number.isNaN(start.getTime()) && (end === null || end > start)) {
      return { kind: "custom", start, end };
    }
  }
  return preset(text ?? "24h");
}
