// The typed API client: every path, body and answer comes from schema.d.ts, generated from
// the API's OpenAPI schema (scripts/openapi.sh), so a changed contract fails `tsc`.
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema";
import { currentToken } from "@/lib/token";

export type Schemas = components["schemas"];

const withToken: Middleware = {
  onRequest({ request }) {
    const token = currentToken();
    if (token && !request.headers.has("Authorization")) {
      request.headers.set("Authorization", `Bearer ${token}`);
    }
    return request;
  },
  onResponse({ request, response }) {
    // The token was refused (expired, the session ended, the account disabled): the app
    // tries its session once more, and otherwise shows the sign-in form.
    if (response.status === 401 && !new URL(request.url).pathname.startsWith("/api/v1/auth/")) {
      window.dispatchEvent(new Event(UNAUTHENTICATED));
    }
    return response;
  },
};

/** The event the client fires when the API answers 401 to a signed-in call. */
export const UNAUTHENTICATED = "haven:unauthenticated";

// Same origin as the app: nginx (production) or the API process (`haven up`) serves both.
export const api = createClient<paths>({ baseUrl: "", credentials: "same-origin" });
api.use(withToken);

export interface ApiProblem {
  status: number;
  detail: string;
  code?: string;
  retryAfter?: number;
}

/** The API's own words for a failure (`detail`), with its status and Retry-After. */
export function problemOf(error: unknown, response?: Response): ApiProblem {
  const status = response?.status ?? 0;
  const header = response?.headers.get("Retry-After");
  const retryAfter = header ? Number(header) : undefined;
  let detail = status ? `request failed (${status})` : "the server could not be reached";
  let code: string | undefined;
  if (error && typeof error === "object") {
    const body = error as { detail?: unknown; code?: unknown; errors?: { field: string; message: string }[] };
    if (typeof body.detail === "string") detail = body.detail;
    if (typeof body.code === "string") code = body.code;
    if (Array.isArray(body.errors) && body.errors.length > 0) {
      detail += ": " + body.errors.map((e) => `${e.field.replace(/^body\./, "")} ${e.message}`).join("; ");
    }
  }
  return { status, detail, code, retryAfter: Number.isFinite(retryAfter) ? retryAfter : undefined };
}

/** Throws the API's problem when the call failed, returns the data otherwise. */
export async function must<T>(
  call: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  const { data, error, response } = await call;
  if (!response.ok || error !== undefined) throw problemOf(error, response);
  return data as T;
}

export function isProblem(value: unknown): value is ApiProblem {
  return typeof value === "object" && value !== null && "detail" in value && "status" in value;
}

export function messageOf(value: unknown): string {
  if (isProblem(value)) return value.detail;
  if (value instanceof Error) return value.message;
  return String(value);
}

