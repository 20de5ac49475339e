// The FleetLens dashboard: fleet overview, per-server drill-down, alerts and freshness, for
// when Grafana is not there. State lives in the URL fragment (#range=24h&server=web-1);
// `#token=...` signs in (a fragment never reaches the server).

import { AlertsPanel, message } from "./alerts";
import {
  api,
  ApiError,
  session,
  type Alert,
  type Freshness,
  type MetricSpec,
  type QueryAnswer,
  type Server,
} from "./api";
import { disposeDetached, drawBand, drawHeatmap, drawTopServers, type Heat, type Ranked } from "./charts";
import { byId, h } from "./dom";
import { formatAge, formatTime, formatValue, metricLabel } from "./format";
import { LiveStream, type LiveStatus } from "./live";
import {
  apiBounds,
  decodeRange,
  encodeRange,
  formatStep,
  heatmapStep,
  isLive,
  niceStep,
  PRESETS,
  spanSeconds,
  startMs,
  type TimeRange,
} from "./range";
import { answerCutoff, average, bucketsOf, mergeWindow, trimBefore, type Bucket, type LiveWindow } from "./series";

const TOP_METRICS = ["cpu_pct", "mem_pct", "disk_pct"];
const TOP_N = 10;
const HEAT_METRIC = "cpu_pct";
const FRESHNESS_EVERY_MS = 30_000;
const ALERTS_EVERY_MS = 15_000;

// ---- state ------------------------------------------------------------------------------

interface Tracked {
  buckets: Bucket[];
  step_ms: number;
  cutoff: number; // live windows starting after this are new to the answer
}

interface OverviewData {
  top: Map<string, { cutoff: number; servers: Map<string, { count: number; sum: number; max: number }> }>;
  heat: { cutoff: number; step_s: number; cells: Map<string, Map<number, { count: number; sum: number }>> };
}

interface ServerData {
  id: string;
  series: Map<string, Tracked>;
}

const app = {
  range: decodeRange("24h") as TimeRange,
  server: null as string | null,
  servers: [] as Server[],
  specs: new Map<string, MetricSpec>(),
  tenant: "",
  overview: null as OverviewData | null,
  detail: null as ServerData | null,
  lastSpeedWindow: null as number | null,
  watermarks: {} as Record<string, string>,
  generation: 0,
  seen: new Set<string>(), // live windows already merged: server|metric|start
  liveWindows: 0,
  timers: [] as number[],
};

/** For the browser test and the curious: `window.fleetlens` in the console. */
(window as unknown as { fleetlens: typeof app }).fleetlens = app;

const live = new LiveStream({
  window: onLiveWindow,
  alert: () => scheduleAlertsRefresh(),
  status: showLiveStatus,
});

let alerts: AlertsPanel;

// ---- start ------------------------------------------------------------------------------

function readHash(): URLSearchParams {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

function writeHash(): void {
  const params = new URLSearchParams({ range: encodeRange(app.range) });
  if (app.server) params.set("server", app.server);
  const next = `#${params}`;
  if (location.hash !== next) history.pushState(null, "", next);
}

async function start(): Promise<void> {
  const hash = readHash();
  const token = hash.get("token");
  if (token) {
    session.signIn(token, hash.get("user") ?? undefined);
    hash.delete("token");
    hash.delete("user");
    history.replaceState(null, "", `${location.pathname}${location.search}#${hash}`);
  }
  if (!session.token) return showSignIn();
  document.body.dataset.status = "loading";
  try {
    const [metrics, inventory] = await Promise.all([
      api<{ metrics: MetricSpec[] }>("/metrics"),
      api<{ servers: Server[] }>("/servers"),
    ]);
    app.specs = new Map(metrics.metrics.map((m) => [m.name, m]));
    app.servers = inventory.servers.sort((a, b) => a.server_id.localeCompare(b.server_id));
    app.tenant = app.servers[0]?.tenant ?? "";
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      session.signOut();
      return showSignIn("That token was not accepted.");
    }
    document.body.dataset.status = "error";
    document.body.replaceChildren(h("div", { class: "fatal" }, `FleetLens API: ${message(error)}`));
    return;
  }
  buildShell();
  fromHash();
  window.addEventListener("popstate", fromHash);
  app.timers.push(window.setInterval(refreshFreshness, FRESHNESS_EVERY_MS));
  app.timers.push(window.setInterval(() => void alerts.refresh().catch(() => undefined), ALERTS_EVERY_MS));
  app.timers.push(window.setInterval(tick, 1000));
  void refreshFreshness();
  void alerts.refresh().catch((e) => toast(message(e), "error"));
}

function fromHash(): void {
  const hash = readHash();
  app.range = decodeRange(hash.get("range"));
  app.server = hash.get("server");
  void render();
}

function navigate(change: { range?: TimeRange; server?: string | null }): void {
  if (change.range !== undefined) app.range = change.range;
  if (change.server !== undefined) app.server = change.server;
  writeHash();
  void render();
}

// ---- sign-in ----------------------------------------------------------------------------

function showSignIn(problem?: string): void {
  document.body.dataset.status = "signin";
  const token = h("input", { class: "input", id: "signin-token", type: "password", placeholder: "the tenant's bearer token", autocomplete: "off", required: true });
  const user = h("input", { class: "input", id: "signin-user", placeholder: "ana", value: localStorage.getItem("fleetlens.user") ?? "" });
  document.body.replaceChildren(
    h(
      "div",
      { class: "signin" },
      h(
        "form",
        {
          class: "signin-card",
          onsubmit: (e: Event) => {
            e.preventDefault();
            session.signIn(token.value.trim(), user.value.trim() || undefined);
            document.body.replaceChildren();
            void start();
          },
        },
        h("div", { class: "brand big" }, logo(), "FleetLens"),
        h("p", { class: "muted" }, "Sign in with your tenant's API token."),
        problem && h("p", { class: "problem" }, problem),
        h("label", {}, "API token", token),
        h("label", {}, h("span", {}, "Your name ", h("span", { class: "hint" }, "(signs acknowledgements)")), user),
        h("button", { class: "btn primary wide", type: "submit" }, "Sign in"),
      ),
    ),
  );
  token.focus();
}

function logo(): SVGSVGElement {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 32 32");
  svg.setAttribute("class", "logo");
  svg.innerHTML =
    '<rect width="32" height="32" rx="8" fill="#4f8cff"/><path d="M7 21l6-7 5 4 7-9" stroke="#fff" stroke-width="3" fill="none" stroke-linecap="round" stroke-linejoin="round"/>';
  return svg;
}

// ---- shell ------------------------------------------------------------------------------

function buildShell(): void {
  const customFrom = h("input", { class: "input", type: "datetime-local", id: "custom-from", step: 60 });
  const customTo = h("input", { class: "input", type: "datetime-local", id: "custom-to", step: 60 });
  const applyCustom = (e: Event) => {
    e.preventDefault();
    const start = new Date(`${customFrom.value}Z`);
    const end = customTo.value ? new Date(`${customTo.value}Z`) : null;
    if (Number.isNaN(start.getTime()) || (end && !(end > start))) {
      return toast("The range needs a start before its end", "error");
    }
    byId("custom-range").hidden = true;
    navigate({ range: { kind: "custom", start, end } });
  };
  document.body.replaceChildren(
    h(
      "header",
      { class: "topbar" },
      h("a", { class: "brand", href: "#", onclick: (e: Event) => (e.preventDefault(), navigate({ server: null })) }, logo(), "FleetLens"),
      app.tenant && h("span", { class: "tenant", title: "Tenant of the token" }, app.tenant),
      h("nav", { class: "crumbs", id: "crumbs" }),
      h("div", { class: "spacer" }),
      h("div", { class: "freshness", id: "freshness" }),
      h(
        "div",
        { class: "range", id: "range", role: "group", "aria-label": "Time range" },
        ...PRESETS.map(([key]) =>
          h("button", { class: "seg", "data-range": key, onclick: () => navigate({ range: decodeRange(key) }) }, key),
        ),
        h("button", { class: "seg", "data-range": "custom", onclick: () => toggleCustom(customFrom, customTo) }, "Custom"),
      ),
      h("span", { class: "live-pill", id: "live-pill" }, h("span", { class: "dot" }), h("span", { class: "label" }, "")),
      h(
        "button",
        { class: "btn ghost", title: `Signed in as ${session.user}`, onclick: () => (session.signOut(), location.reload()) },
        "Sign out",
      ),
    ),
    h(
      "form",
      { class: "custom-range", id: "custom-range", hidden: true, onsubmit: applyCustom },
      h("label", {}, "From", customFrom),
      h("label", {}, "To", customTo),
      h("span", { class: "hint range-hint" }, "UTC · leave To empty for a range that ends now (live)"),
      h("button", { class: "btn primary", type: "submit", id: "custom-apply" }, "Apply"),
    ),
    h(
      "div",
      { class: "layout" },
      h("main", { id: "view", class: "view" }),
      h("aside", { id: "alerts", class: "panel alerts" }),
    ),
    h("div", { class: "toasts", id: "toasts" }),
  );
  alerts = new AlertsPanel(byId("alerts"), (id) => navigate({ server: id }), toast, onAlerts);
}

function toggleCustom(from: HTMLInputElement, to: HTMLInputElement): void {
  const bar = byId("custom-range");
  bar.hidden = !bar.hidden;
  if (!bar.hidden && !from.value) {
    const local = (ms: number) => new Date(ms).toISOString().slice(0, 16);
    from.value = local(startMs(app.range));
    to.value = app.range.kind === "custom" && app.range.end ? local(app.range.end.getTime()) : "";
  }
}

function toast(text: string, kind: "ok" | "error" = "ok"): void {
  const el = h("div", { class: `toast ${kind}` }, text);
  byId("toasts").append(el);
  window.setTimeout(() => el.remove(), kind === "error" ? 8000 : 4000);
}

function showLiveStatus(status: LiveStatus, detail?: string): void {
  document.body.dataset.live = status;
  const pill = document.getElementById("live-pill");
  if (!pill) return;
  const labels: Record<LiveStatus, string> = {
    off: "Paused",
    connecting: "Connecting",
    open: "Live",
    retrying: "Reconnecting",
    refused: "Live refused",
  };
  pill.className = `live-pill ${status}`;
  pill.title = status === "off" ? "Live updates only when the range ends now" : detail ?? "";
  pill.querySelector(".label")!.textContent = labels[status];
}

// ---- rendering --------------------------------------------------------------------------

async function render(): Promise<void> {
  const generation = ++app.generation;
  const stale = () => generation !== app.generation;
  document.body.dataset.status = "loading";
  document.body.dataset.view = app.server ? "server" : "overview";
  for (const button of document.querySelectorAll<HTMLElement>("#range .seg")) {
    const key = app.range.kind === "preset" ? app.range.key : "custom";
    button.classList.toggle("active", button.dataset.range === key);
  }
  renderCrumbs();
  live.close();
  app.seen.clear();
  app.overview = null;
  app.detail = null;
  try {
    if (app.server) await loadServer(app.server, stale);
    else await loadOverview(stale);
  } catch (error) {
    if (stale()) return;
    document.body.dataset.status = "error";
    byId("view").replaceChildren(h("div", { class: "card problem-card" }, message(error)));
    return;
  }
  if (stale()) return;
  disposeDetached();
  if (isLive(app.range)) {
    live.open(app.server ? { server: app.server } : { metric: [...TOP_METRICS] });
  }
  document.body.dataset.status = "ready";
  document.body.dataset.renders = String(Number(document.body.dataset.renders ?? 0) + 1);
}

function renderCrumbs(): void {
  const crumbs = byId("crumbs");
  crumbs.replaceChildren(
    h("a", { href: "#", onclick: (e: Event) => (e.preventDefault(), navigate({ server: null })) }, "Fleet"),
    ...(app.server ? [h("span", { class: "sep" }, "/"), h("span", { class: "here" }, app.server)] : []),
  );
}

function query(metric: string, params: Record<string, string | string[]>): Promise<QueryAnswer> {
  return api<QueryAnswer>("/query", { metric, ...apiBounds(app.range), ...params });
}

function card(title: string, subtitle: string, body: HTMLElement, extra?: HTMLElement): HTMLElement {
  return h(
    "section",
    { class: "card" },
    h("div", { class: "card-head" }, h("div", {}, h("h3", {}, title), h("div", { class: "sub" }, subtitle)), extra),
    body,
  );
}

function notes(answers: QueryAnswer[]): HTMLElement | null {
  const all = [...new Set(answers.flatMap((a) => a.meta.notes))];
  return all.length ? h("div", { class: "notes" }, ...all.map((n) => h("div", {}, `ℹ ${n}`))) : null;
}

// ---- overview ---------------------------------------------------------------------------

async function loadOverview(stale: () => boolean): Promise<void> {
  const span = spanSeconds(app.range);
  const step = formatStep(niceStep(span, 24));
  const heatStep = heatmapStep(span);
  const answers = await Promise.all([
    ...TOP_METRICS.map((m) => query(m, { group_by: "server_id", aggs: "count,sum,max", step })),
    query(HEAT_METRIC, { group_by: "service", aggs: "count,sum", step: formatStep(heatStep) }),
  ]);
  if (stale()) return;
  const heatAnswer = answers[TOP_METRICS.length];
  const data: OverviewData = {
    top: new Map(
      TOP_METRICS.map((metric, i) => {
        const answer = answers[i];
        const servers = new Map<string, { count: number; sum: number; max: number }>();
        const c = columnsOf(answer);
        for (const row of answer.rows) {
          const id = row[c.server_id] as string;
          const acc = servers.get(id) ?? { count: 0, sum: 0, max: Number.NEGATIVE_INFINITY };
          acc.count += Number(row[c.count]);
          acc.sum += Number(row[c.sum]);
          acc.max = Math.max(acc.max, Number(row[c.max]));
          servers.set(id, acc);
        }
        return [metric, { cutoff: answerCutoff(answer), servers }];
      }),
    ),
    heat: { cutoff: answerCutoff(heatAnswer), step_s: heatStep, cells: new Map() },
  };
  const hc = columnsOf(heatAnswer);
  for (const row of heatAnswer.rows) {
    const service = (row[hc.service] as string | null) ?? "(none)";
    const cells = data.heat.cells.get(service) ?? new Map();
    cells.set(Date.parse(row[hc.window_start] as string), { count: Number(row[hc.count]), sum: Number(row[hc.sum]) });
    data.heat.cells.set(service, cells);
  }
  app.overview = data;

  const services = new Set(app.servers.map((s) => s.service).filter(Boolean));
  const regions = new Set(app.servers.map((s) => s.region).filter(Boolean));
  const jump = h("input", { class: "input search", id: "server-search", list: "server-ids", placeholder: "Go to server…" });
  jump.addEventListener("change", () => {
    if (app.servers.some((s) => s.server_id === jump.value)) navigate({ server: jump.value });
  });
  const tops = TOP_METRICS.map((m) =>
    card(
      `Top servers · ${metricLabel(m)}`,
      "average over the range · tick: maximum",
      h("div", { class: "chart bars", id: `top-${m}`, "data-metric": m }),
    ),
  );
  const heat = h("div", { class: "chart heat", id: "heatmap" });
  byId("view").replaceChildren(
    h(
      "div",
      { class: "view-head" },
      h("h1", {}, "Fleet overview"),
      h("div", { class: "spacer" }),
      jump,
      h("datalist", { id: "server-ids" }, ...app.servers.map((s) => h("option", { value: s.server_id }))),
    ),
    h(
      "div",
      { class: "stats" },
      stat("Servers", app.servers.length, "stat-servers"),
      stat("Services", services.size),
      stat("Regions", regions.size),
      stat("Firing alerts", "–", "stat-firing"),
    ),
    notes(answers) ?? "",
    h("div", { class: "grid3" }, ...tops),
    card(`${metricLabel(HEAT_METRIC)} by service`, `average per ${formatStep(heatStep)} bucket (UTC)`, heat),
  );
  onAlerts(alerts.alerts);
  drawOverview();
}

function columnsOf(answer: QueryAnswer): Record<string, number> {
  return Object.fromEntries(answer.columns.map((name, i) => [name, i]));
}

function stat(label: string, value: string | number, id?: string): HTMLElement {
  return h("div", { class: "stat" }, h("div", { class: "stat-value", id }, String(value)), h("div", { class: "stat-label" }, label));
}

function drawOverview(): void {
  const data = app.overview;
  if (!data) return;
  for (const [metric, { servers }] of data.top) {
    const ranked: Ranked[] = [...servers]
      .filter(([, a]) => a.count > 0)
      .map(([server_id, a]) => ({ server_id, avg: a.sum / a.count, max: a.max }))
      .sort((a, b) => b.avg - a.avg)
      .slice(0, TOP_N);
    drawTopServers(byId(`top-${metric}`), ranked, (id) => navigate({ server: id }));
  }
  const rows = [...data.heat.cells.keys()].sort();
  const columns = [...new Set([...data.heat.cells.values()].flatMap((c) => [...c.keys()]))].sort((a, b) => a - b);
  const at = new Map(columns.map((t, i) => [t, i]));
  const cells: Heat["cells"] = [];
  rows.forEach((service, y) => {
    for (const [t, acc] of data.heat.cells.get(service)!) {
      if (acc.count) cells.push([at.get(t)!, y, Number((acc.sum / acc.count).toFixed(2))]);
    }
  });
  drawHeatmap(byId("heatmap"), { rows, columns, cells, step_s: data.heat.step_s }, "percent");
}

function onAlerts(list: Alert[]): void {
  const firing = document.getElementById("stat-firing");
  if (firing) {
    const n = list.filter((a) => a.state === "firing").length;
    firing.textContent = String(n);
    firing.classList.toggle("hot", n > 0);
  }
  const mine = document.getElementById("server-alerts");
  if (mine && app.server) {
    const n = list.filter((a) => a.labels.server === app.server).length;
    mine.textContent = n ? `${n} active alert${n > 1 ? "s" : ""}` : "no active alerts";
    mine.classList.toggle("hot", n > 0);
  }
}

// ---- one server -------------------------------------------------------------------------

async function loadServer(id: string, stale: () => boolean): Promise<void> {
  const server = app.servers.find((s) => s.server_id === id);
  const metrics = server?.metrics.length ? server.metrics : [...app.specs.keys()];
  const ordered = [...metrics].sort((a, b) => order(a) - order(b));
  const answers = await Promise.all(
    ordered.map((m) => query(m, { server: id, group_by: "all", aggs: "count,sum,min,max,p95", step: "auto" })),
  );
  if (stale()) return;
  app.detail = {
    id,
    series: new Map(
      ordered.map((m, i) => [
        m,
        { buckets: bucketsOf(answers[i]), step_ms: answers[i].meta.step_s * 1000, cutoff: answerCutoff(answers[i]) },
      ]),
    ),
  };
  const tags = server
    ? (["region", "env", "service", "cluster"] as const).filter((t) => server[t]).map((t) => h("span", { class: "chip" }, h("span", { class: "k" }, t), server[t]!))
    : [h("span", { class: "chip warn" }, "not in the inventory")];
  byId("view").replaceChildren(
    h(
      "div",
      { class: "view-head" },
      h("button", { class: "btn ghost back", onclick: () => navigate({ server: null }) }, "← Fleet"),
      h("h1", { id: "server-title" }, id),
      ...tags,
      h("div", { class: "spacer" }),
      server && h("span", { class: "muted small" }, `last seen ${formatAge(Date.parse(server.last_seen))}`),
      h("span", { class: "chip", id: "server-alerts" }, "–"),
    ),
    h(
      "div",
      { class: "legend" },
      h("span", { class: "key band" }, "min–max"),
      h("span", { class: "key avg" }, "average"),
      h("span", { class: "key p95" }, "p95"),
      h("span", { class: "muted small" }, `step ${answers[0]?.meta.step ?? "–"} · UTC`),
    ),
    notes(answers) ?? "",
    h(
      "div",
      { class: "grid2" },
      ...ordered.map((m) => {
        const spec = app.specs.get(m);
        return card(
          metricLabel(m),
          spec?.unit ?? "",
          h("div", { class: "chart band", id: `metric-${m}`, "data-metric": m }),
          h("div", { class: "now", id: `now-${m}` }),
        );
      }),
    ),
  );
  onAlerts(alerts.alerts);
  drawServer();
}

function order(metric: string): number {
  const known = ["cpu_pct", "mem_pct", "disk_pct", "load1", "latency_ms", "conns", "net_in_bps", "net_out_bps"];
  const i = known.indexOf(metric);
  return i < 0 ? known.length : i;
}

function drawServer(): void {
  const data = app.detail;
  if (!data) return;
  const from = startMs(app.range);
  const to = app.range.kind === "custom" && app.range.end ? app.range.end.getTime() : Date.now();
  for (const [metric, tracked] of data.series) {
    const spec = app.specs.get(metric);
    const el = document.getElementById(`metric-${metric}`);
    if (!el) continue;
    drawBand(el, tracked.buckets, {
      unit: spec?.unit ?? null,
      min: spec?.min ?? null,
      from,
      to,
      step_s: tracked.step_ms / 1000,
    });
    const last = tracked.buckets.at(-1);
    byId(`now-${metric}`).textContent = last ? formatValue(average(last), spec?.unit ?? null) : "no data";
  }
}

// ---- live -------------------------------------------------------------------------------

let redraw: number | null = null;

function onLiveWindow(w: LiveWindow): void {
  if (w.final === false) return; // a final window replaces it: only those are merged
  const key = `${w.server_id}|${w.metric}|${w.window_start}`;
  if (app.seen.has(key)) return; // sent again (a replay, a reconnect)
  app.seen.add(key);
  const t = Date.parse(w.window_start);
  if (app.lastSpeedWindow === null || t > app.lastSpeedWindow) {
    app.lastSpeedWindow = t;
    showFreshness();
  }
  let changed = false;
  if (app.detail && w.server_id === app.detail.id) {
    const tracked = app.detail.series.get(w.metric);
    if (tracked && t > tracked.cutoff) {
      mergeWindow(tracked.buckets, w, tracked.step_ms);
      if (app.range.kind === "preset") trimBefore(tracked.buckets, startMs(app.range), tracked.step_ms);
      changed = true;
    }
  } else if (app.overview) {
    const top = app.overview.top.get(w.metric);
    if (top && t > top.cutoff) {
      const acc = top.servers.get(w.server_id) ?? { count: 0, sum: 0, max: Number.NEGATIVE_INFINITY };
      acc.count += w.count;
      acc.sum += w.sum;
      acc.max = Math.max(acc.max, w.max);
      top.servers.set(w.server_id, acc);
      changed = true;
    }
    const heat = app.overview.heat;
    if (w.metric === HEAT_METRIC && t > heat.cutoff) {
      const step = heat.step_s * 1000;
      const service = w.service ?? "(none)";
      const cells = heat.cells.get(service) ?? new Map();
      const bucket = Math.floor(t / step) * step;
      const acc = cells.get(bucket) ?? { count: 0, sum: 0 };
      acc.count += w.count;
      acc.sum += w.sum;
      cells.set(bucket, acc);
      heat.cells.set(service, cells);
      changed = true;
    }
  }
  if (!changed) return;
  app.liveWindows++;
  document.body.dataset.liveWindows = String(app.liveWindows);
  // Windows come in bursts (every server's minute at once): one redraw per burst.
  redraw ??= window.setTimeout(() => {
    redraw = null;
    if (app.detail) drawServer();
    else drawOverview();
  }, 200);
}

let alertsRefresh: number | null = null;

function scheduleAlertsRefresh(): void {
  alertsRefresh ??= window.setTimeout(() => {
    alertsRefresh = null;
    void alerts.refresh().catch(() => undefined);
  }, 300);
}

/** Once a second: ages in the header; a live range reloads now and then to re-anchor. */
let lastLoad = Date.now();
function tick(): void {
  showFreshness();
  if (document.body.dataset.status === "ready" && isLive(app.range)) {
    const every = Math.min(15 * 60e3, Math.max(60e3, (spanSeconds(app.range) * 1000) / 40));
    if (Date.now() - lastLoad > every) {
      lastLoad = Date.now();
      void render();
    }
  } else {
    lastLoad = Date.now();
  }
}

// ---- freshness --------------------------------------------------------------------------

async function refreshFreshness(): Promise<void> {
  try {
    const found = await api<Freshness>("/freshness");
    app.watermarks = found.watermarks;
    const speed = found.last_speed_window ? Date.parse(found.last_speed_window) : null;
    if (speed !== null && (app.lastSpeedWindow === null || speed > app.lastSpeedWindow)) app.lastSpeedWindow = speed;
    showFreshness();
  } catch {
    // shown as stale: the next poll may succeed
  }
}

function showFreshness(): void {
  const el = document.getElementById("freshness");
  if (!el) return;
  const speed = app.lastSpeedWindow;
  // A window is announced when it closes, a minute after it starts.
  const age = speed === null ? Infinity : Date.now() - speed - 60e3;
  const level = age <= 3 * 60e3 ? "ok" : age <= 10 * 60e3 ? "warn" : "bad";
  const batch = app.watermarks.rollup_1m ?? Object.values(app.watermarks).sort().at(-1) ?? null;
  el.dataset.lastSpeedWindow = speed === null ? "" : new Date(speed).toISOString();
  el.dataset.batchWatermark = batch ?? "";
  el.title = [
    "Speed layer: the last closed 1-minute window",
    ...Object.entries(app.watermarks).map(([t, at]) => `${t}: verified until ${at}`),
  ].join("\n");
  el.replaceChildren(
    h("span", { class: `dot ${level}` }),
    h("span", { class: "k" }, "Speed"),
    h("b", {}, speed === null ? "no data" : `${formatTime(speed)} UTC`),
    h("span", { class: "muted" }, speed === null ? "" : formatAge(speed + 60e3)),
    h("span", { class: "divider" }),
    h("span", { class: "k" }, "Batch"),
    h("b", {}, batch ? `${formatTime(Date.parse(batch), true)} UTC` : "none yet"),
  );
}

void start();
