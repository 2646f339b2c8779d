// A chat answer over server-sent events. EventSource cannot POST, so this is fetch and a
// stream parser; aborting the fetch (the Stop button) closes the connection, and the API
// then closes its own to llm, which frees the model's slot.
import { createParser, type EventSourceMessage } from "eventsource-parser";
import type { Schemas } from "@/api/client";
import { currentToken } from "@/lib/token";

export type AskBody = Schemas["MessageCreate"];

// The events' payloads are not in the OpenAPI schema (a stream has no response model):
// these mirror api/chat/schemas.py (Source, Citation) and api/chat/router.py (_sse).

/** A retrieved passage as the prompt numbered it: the answer cites it as `[n]`. */
export interface Source {
  n: number;
  chunk_id: string;
  document_id: string;
  title: string | null;
  version: number | null;
  page: number | null;
  heading: string | null;
  score: number;
  text: string;
}

export interface Citation {
  n: number;
  chunk_id: string;
  document_id: string;
  title: string | null;
  version: number | null;
  page: number | null;
  cited: boolean;
  text?: string | null;
  text_truncated?: boolean;
}

export interface MetaEvent {
  request_id: string | null;
  chat_id: string;
  message_id: string;
  model: string;
  sources: Source[];
  reason: string | null;
}

export interface DoneEvent {
  message_id: string;
  finish_reason: "stop" | "length" | "empty";
  citations: Citation[];
  cached: boolean;
  notice: string | null;
  grounded?: boolean | null;
}

/** A failure, before the stream (an HTTP error) or in it (an `error` event). */
export interface StreamFailure {
  reason: string;
  code: string | null;
  status: number;
  retryAfter: number | null;
}

export interface StreamHandlers {
  onMeta: (meta: MetaEvent) => void;
  onToken: (text: string) => void;
  onDone: (done: DoneEvent) => void;
  onError: (failure: StreamFailure) => void;
}

async function failureOf(response: Response): Promise<StreamFailure> {
  const body = (await response.json().catch(() => ({}))) as { detail?: unknown; code?: unknown };
  const header = response.headers.get("Retry-After");
  return {
    reason: typeof body.detail === "string" ? body.detail : `the answer failed (${response.status})`,
    code: typeof body.code === "string" ? body.code : null,
    status: response.status,
    retryAfter: header && Number.isFinite(Number(header)) ? Number(header) : null,
  };
}

/** Ask; resolves when the stream ends (done, error, or aborted through `signal`). */
export async function ask(
  chatId: string,
  body: AskBody,
  signal: AbortSignal,
  handlers: StreamHandlers,
): Promise<void> {
  const headers: Record<string, string> = {
    "Content-Type": "application/json",
    Accept: "text/event-stream",
  };
  const token = currentToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`/api/v1/chats/${encodeURIComponent(chatId)}/messages`, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
    signal,
    credentials: "same-origin",
  });
  if (!response.ok || !response.body) {
    handlers.onError(await failureOf(response));
    return;
  }
  const parser = createParser({
    onEvent(event: EventSourceMessage) {
      const data: unknown = JSON.parse(event.data);
      switch (event.event) {
        case "meta":
          handlers.onMeta(data as MetaEvent);
          break;
        case "token":
          handlers.onToken((data as { text: string }).text);
          break;
        case "done":
          handlers.onDone(data as DoneEvent);
          break;
        case "error": {
          const e = data as { reason: string; code: string | null; status: number; retry_after: number | null };
          handlers.onError({ reason: e.reason, code: e.code, status: e.status, retryAfter: e.retry_after });
          break;
        }
      }
    },
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      parser.feed(value);
    }
  } finally {
    reader.releaseLock();
  }
}
