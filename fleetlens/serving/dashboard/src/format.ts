// Numbers and times as the page shows them (times in UTC, as the API gives them).

const SI = ["", "k", "M", "G", "T"];

export function formatValue(value: number | null | undefined, unit: string | null): string {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  switch (unit) {
    case "percent":
      return `${value.toFixed(1)}%`;
    case "ms":
      return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${value.toFixed(value < 10 ? 1 : 0)} ms`;
    case "bytes/s":
      return si(value, "B/s");
    default:
      return si(value);
  }
}

/** A short axis label: `40%`, `1.2 MB`. */
export function formatAxis(value: number, unit: string | null): string {
  if (unit === "percent") return `${value}%`;
  if (unit === "ms") return si(value, "ms");
  if (unit === "bytes/s") return si(value, "B");
  return si(value);
}

/** `1.2k`, `3.4 MB/s`: three significant digits at most, with an SI prefix. */
function si(value: number, unit = ""): string {
  let v = value;
  let i = 0;
  while (Math.abs(v) >= 1000 && i < SI.length - 1) {
    v /= 1000;
    i++;
  }
  const digits = Math.abs(v) >= 100 || (i === 0 && Number.isInteger(v)) ? 0 : Math.abs(v) >= 10 ? 1 : 2;
  const suffix = `${SI[i]}${unit}`;
  return `${Number(v.toFixed(digits))}${unit ? " " : ""}${suffix}`;
}

const pad = (n: number) => String(n).padStart(2, "0");

/** `14:05` (UTC); with the date when `withDate`: `Nov 30 14:05`. */
export function formatTime(ms: number, withDate = false): string {
  const d = new Date(ms);
  const time = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  if (!withDate) return time;
  const month = d.toLocaleString("en", { month: "short", timeZone: "UTC" });
  return `${month} ${d.getUTCDate()} ${time}`;
}

/** `3 min ago`, `2 h ago`, `just now`. */
export function formatAge(ms: number, now = Date.now()): string {
  const s = Math.max(0, (now - ms) / 1000);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export const METRIC_LABELS: Record<string, string> = {
  cpu_pct: "CPU",
  mem_pct: "Memory",
  disk_pct: "Disk",
  net_in_bps: "Network in",
  net_out_bps: "Network out",
  conns: "Connections",
  latency_ms: "Latency",
  load1: "Load (1 min)",
};

export function metricLabel(name: string): string {
  return METRIC_LABELS[name] ?? name;
}
