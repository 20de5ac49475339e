// The charts (Apache ECharts, only the parts used), and what they show as data-* attributes
// of their containers, for the headless-browser test and for anyone inspecting the page.

import { BarChart, HeatmapChart, LineChart, ScatterChart } from "echarts/charts";
import { GridComponent, TooltipComponent, VisualMapComponent } from "echarts/components";
import * as echarts from "echarts/core";
import type { EChartsCoreOption } from "echarts/core";
import { CanvasRenderer } from "echarts/renderers";

import { formatAxis, formatTime, formatValue } from "./format";
import { average, type Bucket } from "./series";

echarts.use([
  BarChart,
  HeatmapChart,
  LineChart,
  ScatterChart,
  GridComponent,
  TooltipComponent,
  VisualMapComponent,
  CanvasRenderer,
]);

export const COLORS = {
  text: "#c9d1d9",
  muted: "#7d8590",
  grid: "rgba(240, 246, 252, 0.07)",
  axis: "rgba(240, 246, 252, 0.16)",
  accent: "#4f8cff",
  band: "rgba(79, 140, 255, 0.26)",
  p95: "#e3b341",
  ok: "#3fb950",
  warn: "#d29922",
  bad: "#f85149",
  surface: "#161b22",
};

const FONT = "Inter, 'Liberation Sans', 'DejaVu Sans', sans-serif";

const TOOLTIP = {
  backgroundColor: "#1f2630",
  borderColor: "#30363d",
  textStyle: { color: COLORS.text, fontFamily: FONT, fontSize: 12 },
  extraCssText: "box-shadow: 0 8px 24px rgba(0,0,0,.4); border-radius: 6px;",
};

const charts = new Map<HTMLElement, echarts.ECharts>();
const observer = new ResizeObserver((entries) => {
  for (const entry of entries) charts.get(entry.target as HTMLElement)?.resize();
});

function chartOf(el: HTMLElement): echarts.ECharts {
  let chart = charts.get(el);
  if (!chart) {
    chart = echarts.init(el, null, { renderer: "canvas" });
    charts.set(el, chart);
    observer.observe(el);
  }
  return chart;
}

/** Forget the charts whose containers left the page. */
export function disposeDetached(): void {
  for (const [el, chart] of charts) {
    if (!el.isConnected) {
      observer.unobserve(el);
      chart.dispose();
      charts.delete(el);
    }
  }
}

function draw(el: HTMLElement, option: EChartsCoreOption, shown: Record<string, string | number>) {
  chartOf(el).setOption({ textStyle: { fontFamily: FONT }, animation: false, ...option }, true);
  for (const [name, value] of Object.entries(shown)) el.dataset[name] = String(value);
  el.dataset.renders = String(Number(el.dataset.renders ?? 0) + 1);
}

function color(value: number): string {
  return value >= 85 ? COLORS.bad : value >= 65 ? COLORS.warn : COLORS.accent;
}

export interface Ranked {
  server_id: string;
  avg: number;
  max: number;
}

/** Top servers by their average over the range, the range's maximum as a tick. */
export function drawTopServers(el: HTMLElement, ranked: Ranked[], onPick: (id: string) => void) {
  const ids = ranked.map((r) => r.server_id);
  draw(
    el,
    {
      grid: { left: 8, right: 8, top: 6, bottom: 6, containLabel: true },
      tooltip: {
        ...TOOLTIP,
        trigger: "axis",
        axisPointer: { type: "shadow", shadowStyle: { color: "rgba(255,255,255,.04)" } },
        formatter: (items: { dataIndex: number }[]) => {
          const r = ranked[items[0].dataIndex];
          return `<b>${r.server_id}</b><br/>avg ${formatValue(r.avg, "percent")} · max ${formatValue(r.max, "percent")}`;
        },
      },
      xAxis: {
        type: "value",
        min: 0,
        max: 100,
        splitLine: { lineStyle: { color: COLORS.grid } },
        axisLabel: { show: false },
      },
      yAxis: [
        {
          type: "category",
          data: ids,
          inverse: true,
          triggerEvent: true,
          axisTick: { show: false },
          axisLine: { show: false },
          axisLabel: { color: COLORS.text, fontSize: 12, cursor: "pointer" },
        },
        {
          // The averages, as a column on the right: clear of the bars and their ticks.
          type: "category",
          data: ranked.map((r) => `${r.avg.toFixed(1)}%`),
          inverse: true,
          position: "right",
          axisTick: { show: false },
          axisLine: { show: false },
          axisLabel: { color: COLORS.text, fontSize: 12, fontWeight: 500 },
        },
      ],
      series: [
        {
          name: "avg",
          type: "bar",
          barWidth: 10,
          cursor: "pointer",
          showBackground: true,
          backgroundStyle: { color: "rgba(255,255,255,.035)", borderRadius: 3 },
          itemStyle: { borderRadius: 3 },
          data: ranked.map((r) => ({ value: r.avg, itemStyle: { color: color(r.avg) } })),
        },
        {
          name: "max",
          type: "scatter",
          symbol: "rect",
          symbolSize: [2, 14],
          silent: true,
          itemStyle: { color: "rgba(230,237,243,.55)" },
          data: ranked.map((r) => r.max),
        },
      ],
    },
    { series: 2, points: ranked.length, servers: ids.join(",") },
  );
  const chart = chartOf(el);
  chart.off("click");
  chart.on("click", (event: { componentType?: string; dataIndex?: number; value?: unknown }) => {
    const id =
      event.componentType === "yAxis" ? String(event.value) : ids[event.dataIndex ?? -1];
    if (id) onPick(id);
  });
}

/** Rows (services) × columns (bucket starts) of averages; null: no data. */
export interface Heat {
  rows: string[];
  columns: number[];
  step_s: number;
  cells: [number, number, number][]; // column, row, value
}

export function drawHeatmap(el: HTMLElement, heat: Heat, unit: string | null) {
  const withDate = heat.columns.length > 1 && heat.columns.at(-1)! - heat.columns[0] >= 86400e3;
  draw(
    el,
    {
      grid: { left: 8, right: 16, top: 8, bottom: 44, containLabel: true },
      tooltip: {
        ...TOOLTIP,
        formatter: (p: { value: [number, number, number] }) => {
          const [x, y, v] = p.value;
          return `<b>${heat.rows[y]}</b> · ${formatTime(heat.columns[x], true)} UTC<br/>avg ${formatValue(v, unit)}`;
        },
      },
      xAxis: {
        type: "category",
        data: heat.columns.map((t) => formatTime(t, withDate && new Date(t).getUTCHours() === 0)),
        splitArea: { show: false },
        axisTick: { show: false },
        axisLine: { show: false },
        axisLabel: { color: COLORS.muted, fontSize: 11, hideOverlap: true },
      },
      yAxis: {
        type: "category",
        data: heat.rows,
        axisTick: { show: false },
        axisLine: { show: false },
        axisLabel: { color: COLORS.text, fontSize: 12 },
      },
      visualMap: {
        min: 0,
        max: 100,
        calculable: false,
        orient: "horizontal",
        left: "center",
        bottom: 0,
        itemWidth: 10,
        itemHeight: 160,
        textStyle: { color: COLORS.muted, fontSize: 11 },
        text: ["100%", "0%"],
        inRange: { color: ["#0d2a4a", "#1f5fa8", "#3fb0a0", "#e3b341", "#f85149"] },
      },
      series: [
        {
          type: "heatmap",
          data: heat.cells,
          itemStyle: { borderColor: COLORS.surface, borderWidth: 1, borderRadius: 2 },
          emphasis: { itemStyle: { borderColor: "#e6edf3", borderWidth: 1 } },
        },
      ],
    },
    {
      series: 1,
      points: heat.cells.length,
      rows: heat.rows.length,
      columns: heat.columns.length,
      step: heat.step_s,
    },
  );
}

/** A metric of one server: the min–max band, the average and the p95. */
export function drawBand(
  el: HTMLElement,
  buckets: Bucket[],
  opts: { unit: string | null; min: number | null; from: number; to: number; step_s: number },
) {
  const { unit } = opts;
  const at = (b: Bucket, v: number | null) => [b.t, v];
  const last = buckets.at(-1);
  // Percentages near the top get the whole scale, in quarters; others a scale of their own.
  const top = Math.max(0, ...buckets.map((b) => b.max));
  const whole = unit === "percent" && top > 70;
  draw(
    el,
    {
      useUTC: true,
      grid: { left: 8, right: 14, top: 12, bottom: 4, containLabel: true },
      tooltip: {
        ...TOOLTIP,
        trigger: "axis",
        axisPointer: { type: "line", lineStyle: { color: COLORS.axis } },
        formatter: (items: { dataIndex: number }[]) => {
          const b = buckets[items[0]?.dataIndex ?? -1];
          if (!b) return "";
          const row = (label: string, v: number | null, c: string) =>
            `<div class="tt-row"><span class="tt-key" style="--c:${c}">${label}</span><b>${formatValue(v, unit)}</b></div>`;
          return (
            `<div class="tt-time">${formatTime(b.t, true)} UTC</div>` +
            row("max", b.max, "rgba(79,140,255,.45)") +
            row("p95", b.p95, COLORS.p95) +
            row("avg", average(b), COLORS.accent) +
            row("min", b.min, "rgba(79,140,255,.45)")
          );
        },
      },
      xAxis: {
        type: "time",
        min: opts.from,
        max: opts.to,
        axisLine: { lineStyle: { color: COLORS.axis } },
        axisTick: { show: false },
        splitLine: { show: false },
        axisLabel: { color: COLORS.muted, fontSize: 11, hideOverlap: true },
      },
      yAxis: {
        type: "value",
        min: opts.min ?? undefined,
        ...(whole ? { max: 100, interval: 25 } : { splitNumber: 4 }),
        splitLine: { lineStyle: { color: COLORS.grid } },
        axisLabel: { color: COLORS.muted, fontSize: 11, formatter: (v: number) => formatAxis(v, unit) },
      },
      series: [
        {
          name: "min",
          type: "line",
          stack: "band",
          symbol: "none",
          silent: true,
          lineStyle: { width: 0 },
          data: buckets.map((b) => at(b, b.min)),
        },
        {
          name: "min–max",
          type: "line",
          stack: "band",
          symbol: "none",
          silent: true,
          lineStyle: { width: 0 },
          areaStyle: { color: COLORS.band },
          data: buckets.map((b) => at(b, b.max - b.min)),
        },
        {
          name: "avg",
          type: "line",
          symbol: "none",
          lineStyle: { width: 1.6, color: COLORS.accent },
          itemStyle: { color: COLORS.accent },
          data: buckets.map((b) => at(b, average(b))),
        },
        {
          name: "p95",
          type: "line",
          symbol: "none",
          lineStyle: { width: 1.2, type: [4, 3], color: COLORS.p95 },
          itemStyle: { color: COLORS.p95 },
          data: buckets.map((b) => at(b, b.p95)),
        },
      ],
    },
    {
      series: 4,
      points: buckets.length,
      step: opts.step_s,
      last: last ? new Date(last.t).toISOString().replace(".000Z", "Z") : "",
      lastAvg: last ? String(average(last)) : "",
    },
  );
}
