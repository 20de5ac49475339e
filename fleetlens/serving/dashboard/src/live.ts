// /api/v1/live over fetch (fetch-event-source): EventSource cannot send the bearer token,
// and a token in the URL would end up in access logs.

import { fetchEventSource } from "@microsoft/fetch-event-source";

import { authHeaders, url, type Params } from "./api";
import type { LiveWindow } from "./series";

export interface LiveAlert {
  alert_id: string;
  rule: string;
  severity: string;
  change: string;
  state: string;
  server_id: string | null;
  summary: string;
  at: string;
}

export type LiveStatus = "off" | "connecting" | "open" | "retrying" | "refused";

export interface LiveHandlers {
  window: (w: LiveWindow) => void;
  alert: (a: LiveAlert) => void;
  status: (s: LiveStatus, detail?: string) => void;
}

/** Refused by the API (bad token, bad filter): reconnecting would not help. */
class Refused extends Error {}

/** One subscription at a time; `open` replaces the previous one. */
export class LiveStream {
  private abort: AbortController | null = null;

  constructor(private readonly on: LiveHandlers) {}

  open(params: Params): void {
    this.close();
    const abort = (this.abort = new AbortController());
    this.on.status("connecting");
    fetchEventSource(url("/live", params), {
      headers: authHeaders(),
      signal: abort.signal,
      // The page keeps its stream while in a background tab: the live point is there on return.
      openWhenHidden: true,
      onopen: async (response) => {
        const type = response.headers.get("content-type") ?? "";
        if (response.ok && type.startsWith("text/event-stream")) {
          this.on.status("open");
          return;
        }
        if (response.status >= 400 && response.status < 500 && response.status !== 429) {
          throw new Refused(`${response.status} ${response.statusText}`);
        }
        throw new Error(`${response.status}`);
      },
      onmessage: (message) => {
        if (message.event === "window") this.on.window(JSON.parse(message.data) as LiveWindow);
        else if (message.event === "alert") this.on.alert(JSON.parse(message.data) as LiveAlert);
      },
      onclose: () => {
        // The server ended the stream (a restart, or this client was too slow): reconnect.
        throw new Error("closed");
      },
      onerror: (error: unknown) => {
        if (error instanceof Refused) {
          this.on.status("refused", error.message);
          throw error;
        }
        this.on.status("retrying");
        return 3000;
      },
    }).catch(() => {
      // Refused: already reported; aborted: closed on purpose.
    });
  }

  close(): void {
    this.abort?.abort();
    this.abort = null;
    this.on.status("off");
  }
}
