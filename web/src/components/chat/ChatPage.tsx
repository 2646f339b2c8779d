"use client";

import { useRouter, useSearchParams } from "next/navigation";
import { useCallback, useEffect, useRef, useState } from "react";
import { api, messageOf, must, type Schemas } from "@/api/client";
import { Markdown } from "@/components/Markdown";
import { ask, type AskBody, type Source, type StreamFailure } from "@/lib/stream";
import { CitationDialog } from "./CitationDialog";
import { citationOf, type CitationView, type Turn } from "./types";

type Chat = Schemas["ChatRead"];
type Mode = "hybrid" | "dense" | "lexical";

// A failure worth retrying by itself: the model or the stream cap busy for a short while.
const AUTO_RETRY_MAX_SECONDS = 30;
const AUTO_RETRIES = 2;

function turnsOf(items: Schemas["MessageRead"][]): Turn[] {
  return items
    .filter((m) => m.role === "user" || m.role === "assistant")
    .map((m) => ({
      key: m.id,
      role: m.role as Turn["role"],
      content: m.content,
      citations: m.citations.map((c) => citationOf(c as unknown as Record<string, unknown>)),
      // An answer whose reader left (Stop, a closed tab) was stored as far as it went.
      state: m.usage?.finish_reason === "interrupted" ? "stopped" : "done",
    }));
}

function fromSources(sources: Source[]): CitationView[] {
  return sources.map((s) => ({
    n: s.n,
    title: s.title ?? null,
    page: s.page ?? null,
    version: s.version ?? null,
    document_id: s.document_id,
    chunk_id: s.chunk_id,
    text: s.text,
    cited: false,
  }));
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(t);
      resolve();
    });
  });
}

export function ChatPage() {
  const params = useSearchParams();
  const router = useRouter();
  const chatId = params.get("c");
  const [chats, setChats] = useState<Chat[]>([]);
  const [turns, setTurns] = useState<Turn[]>([]);
  const [question, setQuestion] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [running, setRunning] = useState(false);
  const [renaming, setRenaming] = useState<string | null>(null);
  const [renameTo, setRenameTo] = useState("");
  const [open, setOpen] = useState<CitationView | null>(null);
  const [showChats, setShowChats] = useState(false);
  const [rag, setRag] = useState(true);
  const [mode, setMode] = useState<Mode>("hybrid");
  const [topK, setTopK] = useState(6);
  const [tags, setTags] = useState("");
  const [maxTokens, setMaxTokens] = useState("");
  const controller = useRef<AbortController | null>(null);
  // A chat just made for a question: its messages are the ones on screen, not reloaded.
  const fresh = useRef<string | null>(null);
  const endRef = useRef<HTMLDivElement | null>(null);

  const loadChats = useCallback(async () => {
    try {
      const page = await must(api.GET("/api/v1/chats", { params: { query: { limit: 200 } } }));
      setChats(page.items);
    } catch (e) {
      setError(messageOf(e));
    }
  }, []);

  const loadMessages = useCallback(async (id: string) => {
    try {
      const page = await must(
        api.GET("/api/v1/chats/{chat_id}/messages", {
          params: { path: { chat_id: id }, query: { limit: 500 } },
        }),
      );
      setTurns(turnsOf(page.items));
    } catch (e) {
      setError(messageOf(e));
    }
  }, []);

  useEffect(() => {
    void loadChats();
  }, [loadChats]);

  // Leaving the chat page ends a running answer (what was said is stored, marked stopped),
  // rather than letting it hold the model for nobody.
  useEffect(() => () => controller.current?.abort(), []);

  useEffect(() => {
    if (chatId && fresh.current === chatId) return;
    fresh.current = null;
    controller.current?.abort();
    setTurns([]);
    setError(null);
    if (chatId) void loadMessages(chatId);
  }, [chatId, loadMessages]);

  useEffect(() => {
    endRef.current?.scrollIntoView?.({ block: "end" });
  }, [turns]);

  const patchLast = (change: (turn: Turn) => Turn) =>
    setTurns((all) => {
      const last = all[all.length - 1];
      return last ? [...all.slice(0, -1), change(last)] : all;
    });

  async function send(event?: React.FormEvent) {
    event?.preventDefault();
    const content = question.trim();
    if (!content || running) return;
    const stop = new AbortController();
    controller.current = stop;
    setRunning(true);
    setError(null);
    setQuestion("");
    const tagList = tags
      .split(",")
      .map((t) => t.trim())
      .filter(Boolean);
    const longest = Number(maxTokens);
    const body: AskBody = {
      content,
      rag,
      max_tokens: Number.isInteger(longest) && longest > 0 ? longest : null,
      search: {
        mode,
        top_k: topK,
        filters: tagList.length ? { tags: tagList } : {},
      },
    };
    setTurns((all) => [
      ...all,
      { key: `q-${Date.now()}`, role: "user", content, citations: [], state: "done" },
      { key: `a-${Date.now()}`, role: "assistant", content: "", citations: [], state: "streaming" },
    ]);
    try {
      let id = chatId;
      if (!id) {
        const chat = await must(
          api.POST("/api/v1/chats", { body: { title: content.slice(0, 80) }, signal: stop.signal }),
        );
        id = chat.id;
        fresh.current = id;
        router.replace(`/chat?c=${id}`);
        void loadChats();
      }
      for (let attempt = 0; ; attempt++) {
        let failure: StreamFailure | null = null;
        let sources: CitationView[] = [];
        await ask(id, body, stop.signal, {
          onMeta: (meta) => {
            sources = fromSources(meta.sources);
            patchLast((t) => ({ ...t, citations: sources, notice: meta.reason }));
          },
          onToken: (text) => patchLast((t) => ({ ...t, content: t.content + text })),
          onDone: (done) => {
            const byN = new Map(sources.map((s) => [s.n, s]));
            // The citations quote their passage; the meta event's sources are the fallback.
            const citations = done.citations.map((c) => {
              const view = citationOf(c as unknown as Record<string, unknown>);
              return { ...view, text: view.text ?? byN.get(c.n)?.text ?? null };
            });
            patchLast((t) => ({
              ...t,
              state: "done",
              citations: citations.length ? citations : t.citations,
              notice: done.notice ?? t.notice,
            }));
          },
          onError: (f) => {
            failure = f;
          },
        });
        if (!failure || stop.signal.aborted) break;
        const f: StreamFailure = failure;
        const wait = f.retryAfter ?? 0;
        const retryable = (f.status === 429 || f.status === 503) && wait > 0;
        if (!retryable || wait > AUTO_RETRY_MAX_SECONDS || attempt >= AUTO_RETRIES) {
          patchLast((t) => ({ ...t, state: "failed", failure: f, retryIn: undefined }));
          break;
        }
        // The server said when to come back: wait that long (the Stop button still works).
        for (let left = wait; left > 0 && !stop.signal.aborted; left--) {
          patchLast((t) => ({ ...t, state: "streaming", failure: f, retryIn: left, content: "" }));
          await sleep(1000, stop.signal);
        }
        if (stop.signal.aborted) break;
        patchLast((t) => ({ ...t, failure: undefined, retryIn: undefined, content: "" }));
      }
    } catch (e) {
      if (!stop.signal.aborted) {
        patchLast((t) => ({
          ...t,
          state: "failed",
          failure: { reason: messageOf(e), code: null, status: 0, retryAfter: null },
        }));
      }
    } finally {
      if (stop.signal.aborted) {
        patchLast((t) => (t.state === "streaming" ? { ...t, state: "stopped", retryIn: undefined } : t));
      }
      controller.current = null;
      setRunning(false);
    }
  }

  function stopAnswer() {
    controller.current?.abort();
  }

  async function remove(chat: Chat) {
    if (!window.confirm(`Delete the chat "${chat.title || "Untitled"}"?`)) return;
    try {
      await must(api.DELETE("/api/v1/chats/{chat_id}", { params: { path: { chat_id: chat.id } } }));
      if (chat.id === chatId) router.replace("/chat");
      await loadChats();
    } catch (e) {
      setError(messageOf(e));
    }
  }

  async function rename(event: React.FormEvent, chat: Chat) {
    event.preventDefault();
    try {
      await must(
        api.PATCH("/api/v1/chats/{chat_id}", {
          params: { path: { chat_id: chat.id } },
          body: { title: renameTo.trim() },
        }),
      );
      setRenaming(null);
      await loadChats();
    } catch (e) {
      setError(messageOf(e));
    }
  }

  const current = chats.find((c) => c.id === chatId);

  return (
    <div className="chat-layout">
      <aside className={`sidebar ${showChats ? "open" : ""}`} aria-label="Chats">
        <div className="sidebar-head">
          <button
            type="button"
            className="primary"
            onClick={() => {
              setShowChats(false);
              router.push("/chat");
            }}
          >
            New chat
          </button>
        </div>
        <ul className="chat-list" data-testid="chat-list">
          {chats.map((chat) => (
            <li key={chat.id} className={chat.id === chatId ? "active" : undefined}>
              {renaming === chat.id ? (
                <form onSubmit={(e) => void rename(e, chat)} className="row">
                  <label className="sr-only" htmlFor={`rename-${chat.id}`}>
                    New title
                  </label>
                  <input
                    id={`rename-${chat.id}`}
                    value={renameTo}
                    autoFocus
                    maxLength={200}
                    onChange={(e) => setRenameTo(e.target.value)}
                  />
                  <button type="submit">Save</button>
                  <button type="button" onClick={() => setRenaming(null)}>
                    Cancel
                  </button>
                </form>
              ) : (
                <>
                  <a
                    href={`/chat?c=${chat.id}`}
                    aria-current={chat.id === chatId ? "page" : undefined}
                    onClick={(e) => {
                      e.preventDefault();
                      setShowChats(false);
                      router.push(`/chat?c=${chat.id}`);
                    }}
                  >
                    {chat.title || "Untitled"}
                  </a>
                  <span className="chat-actions">
                    <button
                      type="button"
                      aria-label={`Rename ${chat.title || "Untitled"}`}
                      onClick={() => {
                        setRenaming(chat.id);
                        setRenameTo(chat.title);
                      }}
                    >
                      Rename
                    </button>
                    <button
                      type="button"
                      aria-label={`Delete ${chat.title || "Untitled"}`}
                      onClick={() => void remove(chat)}
                    >
                      Delete
                    </button>
                  </span>
                </>
              )}
            </li>
          ))}
          {chats.length === 0 && <li className="muted">No chats yet.</li>}
        </ul>
      </aside>
      <main id="main" className="conversation">
        <div className="row conversation-head">
          <button
            type="button"
            className="phone-only"
            aria-expanded={showChats}
            onClick={() => setShowChats((v) => !v)}
          >
            Chats
          </button>
          <h1>{current?.title || (chatId ? "Chat" : "New chat")}</h1>
        </div>
        {error && (
          <p role="alert" className="error">
            {error}
          </p>
        )}
        <ol className="turns" aria-live="polite" data-testid="turns">
          {turns.map((turn) => (
            <li key={turn.key} className={`turn ${turn.role}`} data-state={turn.state}>
              <span className="sr-only">{turn.role === "user" ? "You:" : "Haven:"}</span>
              {turn.role === "user" ? (
                <p className="question">{turn.content}</p>
              ) : (
                <Answer turn={turn} onCite={(n) => setOpen(turn.citations.find((c) => c.n === n) ?? null)} />
              )}
            </li>
          ))}
          {turns.length === 0 && !chatId && (
            <li className="muted">Ask a question about your documents.</li>
          )}
        </ol>
        <div ref={endRef} />
        <form onSubmit={(e) => void send(e)} className="composer">
          <label htmlFor="question" className="sr-only">
            Your question
          </label>
          <textarea
            id="question"
            rows={3}
            maxLength={8000}
            placeholder="Ask a question…"
            value={question}
            onChange={(e) => setQuestion(e.target.value)}
            onKeyDown={(e) => {
              if (e.key === "Enter" && !e.shiftKey) {
                e.preventDefault();
                void send();
              }
            }}
          />
          <div className="row">
            <button type="submit" className="primary" disabled={running || !question.trim()}>
              Send
            </button>
            <button type="button" onClick={stopAnswer} disabled={!running} data-testid="stop">
              Stop
            </button>
            <details className="options">
              <summary>Options</summary>
              <div className="stack">
                <label className="inline">
                  <input type="checkbox" checked={rag} onChange={(e) => setRag(e.target.checked)} />
                  Answer from the documents (RAG)
                </label>
                <label>
                  Search mode
                  <select value={mode} onChange={(e) => setMode(e.target.value as Mode)} disabled={!rag}>
                    <option value="hybrid">hybrid</option>
                    <option value="dense">dense</option>
                    <option value="lexical">lexical</option>
                  </select>
                </label>
                <label>
                  Passages
                  <input
                    type="number"
                    min={1}
                    max={20}
                    value={topK}
                    disabled={!rag}
                    onChange={(e) => setTopK(Math.min(20, Math.max(1, Number(e.target.value) || 1)))}
                  />
                </label>
                <label>
                  Longest answer (tokens; empty: the server&apos;s default)
                  <input
                    type="number"
                    min={1}
                    value={maxTokens}
                    onChange={(e) => setMaxTokens(e.target.value)}
                  />
                </label>
                <label>
                  Only documents tagged (comma-separated)
                  <input value={tags} disabled={!rag} onChange={(e) => setTags(e.target.value)} />
                </label>
              </div>
            </details>
          </div>
        </form>
      </main>
      <CitationDialog citation={open} onClose={() => setOpen(null)} />
    </div>
  );
}

function Answer({ turn, onCite }: { turn: Turn; onCite: (n: number) => void }) {
  const known = new Set(turn.citations.map((c) => c.n));
  // Every passage the answer was given, the ones it cites first.
  const listed = [...turn.citations].sort((a, b) => Number(b.cited) - Number(a.cited) || a.n - b.n);
  return (
    <div className="answer" data-testid="answer">
      {turn.content ? (
        <Markdown text={turn.content} citations={known} onCite={onCite} />
      ) : (
        turn.state === "streaming" && !turn.failure && <p className="muted">Thinking…</p>
      )}
      {turn.state === "streaming" && turn.content && <span className="sr-only">Answering…</span>}
      {turn.failure && (
        <p role="alert" className="error" data-testid="answer-error">
          {turn.failure.reason}
          {turn.retryIn ? ` Trying again in ${turn.retryIn} s…` : ""}
        </p>
      )}
      {turn.state === "stopped" && (
        <p className="muted" data-testid="stopped">
          Stopped.
        </p>
      )}
      {turn.notice && turn.state !== "streaming" && <p className="notice">{turn.notice}</p>}
      {turn.state !== "streaming" && listed.length > 0 && (
        <ol className="sources" aria-label="Sources" data-testid="sources">
          {listed.map((c) => (
            <li key={c.n}>
              <button type="button" className="link" onClick={() => onCite(c.n)}>
                [{c.n}] {c.title ?? "Untitled"}
                {c.page ? `, page ${c.page}` : ""}
              </button>
              {c.cited ? " · cited" : ""}
            </li>
          ))}
        </ol>
      )}
    </div>
  );
}
