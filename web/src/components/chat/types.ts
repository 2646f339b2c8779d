import type { StreamFailure } from "@/lib/stream";

/** A cited passage as the answer numbered it: enough to show it without asking again. */
export interface CitationView {
  n: number;
  title: string | null;
  page: number | null;
  version: number | null;
  document_id: string | null;
  chunk_id: string | null;
  text: string | null;
  cited: boolean;
}

export interface Turn {
  key: string;
  role: "user" | "assistant";
  content: string;
  citations: CitationView[];
  state: "done" | "streaming" | "stopped" | "failed";
  notice?: string | null;
  failure?: StreamFailure;
  retryIn?: number;
}

function str(value: unknown): string | null {
  return typeof value === "string" ? value : null;
}

function num(value: unknown): number | null {
  return typeof value === "number" ? value : null;
}

export function citationOf(raw: Record<string, unknown>): CitationView {
  return {
    n: num(raw.n) ?? 0,
    title: str(raw.title),
    page: num(raw.page),
    version: num(raw.version),
    document_id: str(raw.document_id),
    chunk_id: str(raw.chunk_id),
    // The quoted passage, cut at the API's limit (`text_truncated`).
    text: str(raw.text) === null ? null : `${str(raw.text)}${raw.text_truncated === true ? "…" : ""}`,
    cited: raw.cited !== false,
  };
}
