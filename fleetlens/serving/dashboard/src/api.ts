// The FleetLens API: bearer-token requests and the shapes of its answers.

const TOKEN_KEY = "fleetlens.token";
const USER_KEY = "fleetlens.user";

export type Params = Record<string, string | number | string[] | undefined>;

/** A refused request; `field` names the parameter at fault (a 400's `detail.field`). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

export interface QueryMeta {
  metric: string;
  start: string;
  end: string;
  step: string;
  step_s: number;
  tier: string;
  sources: { table: string; start: string; end: string }[];
  batch_watermark: string | null;
  watermarks: Record<string, string | null>;
  last_speed_window: string | null;
  notes: string[];
}

export interface QueryAnswer {
  meta: QueryMeta;
  columns: string[];
  rows: (string | number | null)[][];
}

export interface Server {
  server_id: string;
  tenant: string;
  region: string | null;
  env: string | null;
  service: string | null;
  cluster: string | null;
  metrics: string[];
  first_seen: string;
  last_seen: string;
}

export interface MetricSpec {
  name: string;
  unit: string | null;
  min: number | null;
  max: number | null;
}

export interface Freshness {
  watermarks: Record<string, string>;
  last_speed_window: string | null;
}

export interface Alert {
  id: string;
  rule: string;
  severity: string;
  state: "pending" | "firing";
  labels: Record<string, string | null>;
  value: number | null;
  summary: string;
  started_at: string | null;
  firing_at: string | null;
  silenced_by: string[];
  acked_by: string | null;
  acked_at: string | null;
}

export interface Matcher {
  name: string;
  value: string;
  is_regex?: boolean;
  is_equal?: boolean;
}

/** The stored token and the name acknowledgements are signed with. */
export const session = {
  get token(): string | null {
    return localStorage.getItem(TOKEN_KEY);
  },
  get user(): string {
    return localStorage.getItem(USER_KEY) || "dashboard";
  },
  signIn(token: string, user?: string): void {
    localStorage.setItem(TOKEN_KEY, token);
    if (user) localStorage.setItem(USER_KEY, user);
  },
  signOut(): void {
    localStorage.removeItem(TOKEN_KEY);
  },
};

export function url(path: string, params: Params = {}): string {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value === undefined) continue;
    for (const item of Array.isArray(value) ? value : [value]) search.append(name, String(item));
  }
  const query = search.toString();
  return `/api/v1${path}${query ? `?${query}` : ""}`;
}

export function authHeaders(): Record<string, string> {
  return { Authorization: `Bearer ${session.token ?? ""}` };
}

/** GET (or, with `body`, POST) `/api/v1<path>` as JSON. */
export async function api<T>(path: string, params: Params = {}, body?: unknown): Promise<T> {
  const init: RequestInit = { headers: { ...authHeaders(), Accept: "application/json" } };
  if (body !== undefined) {
    init.method = "POST";
    init.body = JSON.stringify(body);
    init.headers = { ...init.headers, "Content-Type": "application/json" };
  }
  const response = await fetch(url(path, params), init);
  if (!response.ok) throw await refusal(response);
  return (await response.json()) as T;
}

async function refusal(response: Response): Promise<ApiError> {
  let detail: unknown = response.statusText;
  try {
    detail = ((await response.json()) as { detail?: unknown }).detail ?? detail;
  } catch {
    // not JSON (a proxy's error page): the status text says enough
  }
  if (typeof detail === "object" && detail !== null && "reason" in detail) {
    const d = detail as { field?: string; reason: string };
    return new ApiError(response.status, d.reason, d.field);
  }
  if (Array.isArray(detail)) {
    // FastAPI's validation errors: [{loc, msg}, ...]
    const first = detail[0] as { loc?: unknown[]; msg?: string } | undefined;
    return new ApiError(response.status, `${first?.loc?.join(".")}: ${first?.msg}`);
  }
  return new ApiError(response.status, String(detail));
}

/** Column positions of a query answer, by name. */
export function columnIndex(answer: QueryAnswer): Record<string, number> {
  return Object.fromEntries(answer.columns.map((name, i) => [name, i]));
}
