"use client";

import { useState } from "react";
import { api, messageOf, must, type Schemas } from "@/api/client";

type Mode = "hybrid" | "dense" | "lexical";

export default function SearchPage() {
  const [query, setQuery] = useState("");
  const [mode, setMode] = useState<Mode>("hybrid");
  const [topK, setTopK] = useState(10);
  const [tags, setTags] = useState("");
  const [lang, setLang] = useState("");
  const [mmr, setMmr] = useState(false);
  const [result, setResult] = useState<Schemas["SearchResponse"] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function run(event: React.FormEvent) {
    event.preventDefault();
    if (!query.trim()) return;
    setBusy(true);
    setError(null);
    const list = (value: string) =>
      value
        .split(",")
        .map((t) => t.trim())
        .filter(Boolean);
    try {
      setResult(
        await must(
          api.POST("/api/v1/search", {
            body: {
              query,
              mode,
              top_k: topK,
              mmr,
              filters: {
                tags: list(tags).length ? list(tags) : null,
                lang: list(lang).length ? list(lang) : null,
              },
            },
          }),
        ),
      );
    } catch (e) {
      setError(messageOf(e));
    } finally {
      setBusy(false);
    }
  }

  return (
    <main id="main" className="page">
      <h1>Search</h1>
      <form onSubmit={(e) => void run(e)} className="card stack">
        <label>
          Query
          <input value={query} onChange={(e) => setQuery(e.target.value)} maxLength={4000} required />
        </label>
        <div className="row filters">
          <label>
            Mode
            <select value={mode} onChange={(e) => setMode(e.target.value as Mode)}>
              <option value="hybrid">hybrid</option>
              <option value="dense">dense</option>
              <option value="lexical">lexical</option>
            </select>
          </label>
          <label>
            Results
            <input
              type="number"
              min={1}
              max={100}
              value={topK}
              onChange={(e) => setTopK(Math.min(100, Math.max(1, Number(e.target.value) || 1)))}
            />
          </label>
          <label>
            Tags
            <input value={tags} onChange={(e) => setTags(e.target.value)} placeholder="a, b" />
          </label>
          <label>
            Languages
            <input value={lang} onChange={(e) => setLang(e.target.value)} placeholder="en, de" />
          </label>
          <label className="inline">
            <input type="checkbox" checked={mmr} onChange={(e) => setMmr(e.target.checked)} />
            Diversify (MMR)
          </label>
        </div>
        <button type="submit" className="primary" disabled={busy}>
          {busy ? "Searching…" : "Search"}
        </button>
      </form>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {result && (
        <section aria-labelledby="results-title">
          <h2 id="results-title">
            {result.results.length} results{" "}
            <span className="muted">
              ({result.mode}; ranked by {(result.channels ?? []).join(" and ") || "nothing"}; query language{" "}
              {result.query_lang})
            </span>
          </h2>
          {result.reason && <p className="notice">{result.reason}</p>}
          <ol className="hits" data-testid="hits">
            {result.results.map((hit) => (
              <li key={hit.chunk_id} className="card">
                <h3>
                  {hit.title ?? "Untitled"}
                  {hit.page ? `, page ${hit.page}` : ""}
                  {hit.heading ? ` — ${hit.heading}` : ""}
                </h3>
                <p className="muted ranks">
                  score {hit.score.toFixed(3)} · dense rank {hit.ranks.dense ?? "–"} · lexical rank{" "}
                  {hit.ranks.lexical ?? "–"} · version {hit.version ?? "–"} · {hit.lang}
                </p>
                <p className="passage">{hit.text}</p>
              </li>
            ))}
          </ol>
        </section>
      )}
    </main>
  );
}
