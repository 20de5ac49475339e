// The active alerts, with acknowledge and silence.

import { api, ApiError, session, type Alert, type Matcher } from "./api";
import { h } from "./dom";
import { formatAge } from "./format";

const SILENCE_HOURS = [1, 4, 24, 168];

export class AlertsPanel {
  alerts: Alert[] = [];
  private silences = 0;
  private silencing: string | null = null; // the alert whose silence form is open
  private readonly list = h("div", { class: "alert-list", id: "alert-list" });
  private readonly count = h("span", { class: "count", id: "alert-count" }, "0");
  private readonly foot = h("div", { class: "panel-foot" });

  constructor(
    root: HTMLElement,
    private readonly onServer: (id: string) => void,
    private readonly notify: (text: string, kind?: "ok" | "error") => void,
    private readonly changed: (alerts: Alert[]) => void,
  ) {
    root.replaceChildren(
      h("div", { class: "panel-head" }, h("h2", {}, "Active alerts"), this.count),
      this.list,
      this.foot,
    );
  }

  async refresh(): Promise<void> {
    const [{ alerts }, { silences }] = await Promise.all([
      api<{ alerts: Alert[] }>("/alerts"),
      api<{ silences: unknown[] }>("/silences", { state: "active" }),
    ]);
    this.alerts = alerts;
    this.silences = silences.length;
    this.render();
    this.changed(alerts);
  }

  private render(): void {
    const firing = this.alerts.filter((a) => a.state === "firing").length;
    this.count.textContent = String(this.alerts.length);
    this.count.className = `count ${firing ? "hot" : ""}`;
    this.list.dataset.count = String(this.alerts.length);
    this.list.replaceChildren(
      ...(this.alerts.length
        ? this.alerts.map((a) => this.card(a))
        : [h("div", { class: "empty" }, h("div", { class: "empty-mark" }, "✓"), "No active alerts")]),
    );
    this.foot.textContent =
      this.silences === 1 ? "1 silence in force" : `${this.silences} silences in force`;
  }

  private card(a: Alert): HTMLElement {
    const server = a.labels.server ?? null;
    const since = a.firing_at ?? a.started_at;
    const acked = a.acked_by !== null;
    const silenced = a.silenced_by.length > 0;
    return h(
      "article",
      {
        class: `alert sev-${a.severity} ${acked ? "is-acked" : ""}`,
        "data-alert-id": a.id,
        "data-state": a.state,
        "data-acked": acked ? a.acked_by : null,
        "data-server": server,
      },
      h(
        "div",
        { class: "alert-top" },
        h("span", { class: "sev" }, a.severity),
        h("span", { class: `state ${a.state}` }, a.state),
        silenced && h("span", { class: "state silenced" }, "silenced"),
        since && h("span", { class: "since", title: since }, formatAge(Date.parse(since))),
      ),
      h("div", { class: "alert-rule" }, a.rule),
      a.summary && h("div", { class: "alert-summary" }, a.summary),
      h(
        "div",
        { class: "alert-meta" },
        server &&
          h("a", { href: "#", class: "server-link", onclick: (e: Event) => (e.preventDefault(), this.onServer(server)) }, server),
        a.labels.service && h("span", {}, a.labels.service),
        a.value !== null && h("span", {}, `value ${a.value.toFixed(1)}`),
      ),
      acked
        ? h("div", { class: "acked" }, `✓ Acknowledged by ${a.acked_by}`, a.acked_at && ` · ${formatAge(Date.parse(a.acked_at))}`)
        : h(
            "div",
            { class: "alert-actions" },
            a.state === "firing" &&
              h("button", { class: "btn primary ack", onclick: () => this.ack(a) }, "Acknowledge"),
            h("button", { class: "btn silence", onclick: () => this.toggleSilence(a.id) }, "Silence"),
          ),
      this.silencing === a.id && this.silenceForm(a),
    );
  }

  private silenceForm(a: Alert): HTMLElement {
    const scopes: Matcher[] = (["server", "service", "cluster"] as const)
      .filter((name) => a.labels[name])
      .map((name) => ({ name, value: a.labels[name]! }));
    const scope = h(
      "select",
      { class: "input" },
      ...scopes.map((m, i) => h("option", { value: i }, `${m.name} = ${m.value}`)),
    );
    const hours = h(
      "select",
      { class: "input" },
      ...SILENCE_HOURS.map((n) => h("option", { value: n, selected: n === 4 }, n < 24 ? `${n} h` : `${n / 24} d`)),
    );
    const comment = h("input", { class: "input", placeholder: "Why (required)", maxlength: 2000 });
    const form = h(
      "form",
      {
        class: "silence-form",
        onsubmit: async (e: Event) => {
          e.preventDefault();
          if (!comment.value.trim()) {
            comment.focus();
            return;
          }
          const ends = new Date(Date.now() + Number(hours.value) * 3600e3);
          try {
            await api("/silences", {}, {
              matchers: [scopes[Number(scope.value)]],
              ends_at: ends.toISOString(),
              comment: comment.value.trim(),
              created_by: session.user,
            });
            this.silencing = null;
            this.notify(`Silenced ${scope.selectedOptions[0].text} for ${hours.selectedOptions[0].text}`);
            await this.refresh();
          } catch (error) {
            this.notify(message(error), "error");
          }
        },
      },
      h("label", {}, "Match", scope),
      h("label", {}, "For", hours),
      comment,
      h(
        "div",
        { class: "alert-actions" },
        h("button", { class: "btn primary", type: "submit" }, "Create silence"),
        h("button", { class: "btn", type: "button", onclick: () => this.toggleSilence(a.id) }, "Cancel"),
      ),
    );
    queueMicrotask(() => comment.focus());
    return form;
  }

  private toggleSilence(id: string): void {
    this.silencing = this.silencing === id ? null : id;
    this.render();
  }

  private async ack(a: Alert): Promise<void> {
    try {
      await api(`/alerts/${encodeURIComponent(a.id)}/ack`, {}, { by: session.user, comment: "" });
      this.notify(`Acknowledged ${a.rule} on ${a.labels.server ?? a.id}`);
      await this.refresh();
    } catch (error) {
      this.notify(message(error), "error");
    }
  }
}

export function message(error: unknown): string {
  if (error instanceof ApiError) return `${error.status}: ${error.message}`;
  return error instanceof Error ? error.message : String(error);
}
