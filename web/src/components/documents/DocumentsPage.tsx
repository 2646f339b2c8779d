"use client";

import { useCallback, useEffect, useRef, useState } from "react";
import { api, messageOf, must, type Schemas } from "@/api/client";
import { atLeast, useAuth } from "@/lib/auth";
import { stageOf, upload, type Job } from "@/lib/upload";

type Doc = Schemas["DocumentRead"];
type Detail = Schemas["DocumentDetail"];
type DocState = Doc["state"];

interface Pending {
  key: string;
  name: string;
  stage: string;
  progress: number;
  jobId?: string | null;
  reason?: string | null;
}

const STAGES = ["uploading", "uploaded", "queued", "extracting", "chunking", "embedding", "indexing", "ready"];

function when(iso: string): string {
  return new Date(iso).toLocaleString();
}

export function DocumentsPage() {
  const { me } = useAuth();
  const canEdit = atLeast(me, "editor");
  const [docs, setDocs] = useState<Doc[]>([]);
  const [total, setTotal] = useState(0);
  const [state, setState] = useState<DocState | "">("");
  const [tag, setTag] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [pending, setPending] = useState<Pending[]>([]);
  const [open, setOpen] = useState<Detail | null>(null);
  const [dragging, setDragging] = useState(false);
  const input = useRef<HTMLInputElement | null>(null);

  const load = useCallback(async () => {
    try {
      const page = await must(
        api.GET("/api/v1/documents", {
          params: { query: { limit: 200, state: state || undefined, tag: tag.trim() || undefined } },
        }),
      );
      setDocs(page.items);
      setTotal(page.total);
    } catch (e) {
      setError(messageOf(e));
    }
  }, [state, tag]);

  useEffect(() => {
    const first = setTimeout(() => void load(), 0);
    return () => clearTimeout(first);
  }, [load]);

  const update = (key: string, change: Partial<Pending>) =>
    setPending((all) => all.map((p) => (p.key === key ? { ...p, ...change } : p)));

  async function follow(key: string, jobId: string) {
    // The job's stage until it ends; the list refreshes as documents change state.
    for (;;) {
      let job: Job;
      try {
        job = await must(api.GET("/api/v1/jobs/{job_id}", { params: { path: { job_id: jobId } } }));
      } catch (e) {
        update(key, { stage: "failed", reason: messageOf(e) });
        return;
      }
      const stage = stageOf(job);
      update(key, {
        stage,
        progress: 1,
        reason: job.last_error_message ?? job.last_error ?? null,
      });
      if (["ready", "failed", "canceled"].includes(stage)) {
        void load();
        return;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  async function uploadFiles(files: File[]) {
    const entries = files.map((f, i) => ({
      key: `${Date.now()}-${i}-${f.name}`,
      name: f.name,
      stage: "uploading",
      progress: 0,
    }));
    setPending((all) => [...entries, ...all]);
    await Promise.all(
      files.map(async (file, i) => {
        const key = entries[i]!.key;
        try {
          const accepted = await upload(file, (fraction) => update(key, { progress: fraction }));
          void load();
          if (accepted.duplicate && !accepted.job_id) {
            update(key, { stage: accepted.document.state, progress: 1, reason: "already uploaded" });
            return;
          }
          update(key, { stage: "uploaded", progress: 1, jobId: accepted.job_id });
          if (accepted.job_id) await follow(key, accepted.job_id);
        } catch (e) {
          update(key, { stage: "failed", reason: messageOf(e) });
        }
      }),
    );
  }

  async function showVersions(doc: Doc) {
    try {
      setOpen(
        await must(api.GET("/api/v1/documents/{document_id}", { params: { path: { document_id: doc.id } } })),
      );
    } catch (e) {
      setError(messageOf(e));
    }
  }

  async function download(doc: Doc, version?: number) {
    try {
      const link = await must(
        api.GET("/api/v1/documents/{document_id}/download", {
          params: { path: { document_id: doc.id }, query: { version } },
        }),
      );
      window.location.assign(link.url);
    } catch (e) {
      setError(messageOf(e));
    }
  }

  async function remove(doc: Doc) {
    if (!window.confirm(`Delete "${doc.title}" and every version of it?`)) return;
    try {
      await must(api.DELETE("/api/v1/documents/{document_id}", { params: { path: { document_id: doc.id } } }));
      if (open?.id === doc.id) setOpen(null);
      await load();
    } catch (e) {
      setError(messageOf(e));
    }
  }

  return (
    <main id="main" className="page">
      <h1>Documents</h1>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {canEdit && (
        <section aria-labelledby="upload-title" className="card">
          <h2 id="upload-title">Upload</h2>
          <div
            className={`dropzone ${dragging ? "dragging" : ""}`}
            data-testid="dropzone"
            onDragOver={(e) => {
              e.preventDefault();
              setDragging(true);
            }}
            onDragLeave={() => setDragging(false)}
            onDrop={(e) => {
              e.preventDefault();
              setDragging(false);
              void uploadFiles(Array.from(e.dataTransfer.files));
            }}
          >
            <p>Drop files here, or</p>
            <label className="button">
              Choose files
              <input
                ref={input}
                type="file"
                multiple
                className="sr-only"
                data-testid="file-input"
                onChange={(e) => {
                  const files = Array.from(e.target.files ?? []);
                  e.target.value = "";
                  void uploadFiles(files);
                }}
              />
            </label>
            <p className="muted">PDF, Word, Markdown, HTML, text… Large files go straight to storage.</p>
          </div>
          {pending.length > 0 && (
            <ul className="uploads" aria-label="Uploads" data-testid="uploads">
              {pending.map((p) => (
                <li key={p.key} data-stage={p.stage}>
                  <span className="name">{p.name}</span>
                  <span className={`stage stage-${p.stage}`} data-testid="upload-stage">
                    {p.stage}
                  </span>
                  {p.stage === "uploading" ? (
                    <progress max={1} value={p.progress} aria-label={`${p.name} upload`} />
                  ) : (
                    <ol className="stages" aria-label={`${p.name} stages`}>
                      {STAGES.map((s) => (
                        <li
                          key={s}
                          className={
                            STAGES.indexOf(s) <= STAGES.indexOf(p.stage) ? "reached" : undefined
                          }
                        >
                          {s}
                        </li>
                      ))}
                    </ol>
                  )}
                  {p.reason && <span className={p.stage === "failed" ? "error" : "muted"}>{p.reason}</span>}
                </li>
              ))}
            </ul>
          )}
        </section>
      )}
      <section aria-labelledby="list-title">
        <h2 id="list-title">
          Library <span className="muted">({total})</span>
        </h2>
        <div className="row filters">
          <label>
            State
            <select value={state} onChange={(e) => setState(e.target.value as DocState | "")}>
              <option value="">any</option>
              <option value="queued">queued</option>
              <option value="processing">processing</option>
              <option value="ready">ready</option>
              <option value="failed">failed</option>
              <option value="canceled">canceled</option>
            </select>
          </label>
          <label>
            Tag
            <input value={tag} onChange={(e) => setTag(e.target.value)} />
          </label>
          <button type="button" onClick={() => void load()}>
            Refresh
          </button>
        </div>
        <div className="table-wrap">
          <table data-testid="documents">
            <thead>
              <tr>
                <th scope="col">Title</th>
                <th scope="col">State</th>
                <th scope="col">Version</th>
                <th scope="col">Tags</th>
                <th scope="col">Updated</th>
                <th scope="col">Actions</th>
              </tr>
            </thead>
            <tbody>
              {docs.map((doc) => (
                <tr key={doc.id}>
                  <td>{doc.title}</td>
                  <td>
                    <span className={`stage stage-${doc.state}`}>{doc.state}</span>
                  </td>
                  <td>{doc.current_version ?? "–"}</td>
                  <td>{doc.tags.join(", ")}</td>
                  <td>{when(doc.updated_at)}</td>
                  <td className="actions">
                    <button type="button" onClick={() => void showVersions(doc)} aria-label={`Versions of ${doc.title}`}>
                      Versions
                    </button>
                    <button type="button" onClick={() => void download(doc)} aria-label={`Download ${doc.title}`}>
                      Download
                    </button>
                    {canEdit && (
                      <button type="button" className="danger" onClick={() => void remove(doc)} aria-label={`Delete ${doc.title}`}>
                        Delete
                      </button>
                    )}
                  </td>
                </tr>
              ))}
              {docs.length === 0 && (
                <tr>
                  <td colSpan={6} className="muted">
                    No documents.
                  </td>
                </tr>
              )}
            </tbody>
          </table>
        </div>
      </section>
      {open && (
        <section aria-labelledby="versions-title" className="card">
          <div className="row">
            <h2 id="versions-title">Versions of {open.title}</h2>
            <button type="button" onClick={() => setOpen(null)}>
              Close
            </button>
          </div>
          <p className="muted">
            {open.chunks} passages indexed · language {open.lang}
          </p>
          <ul>
            {open.versions.map((v) => (
              <li key={v.id}>
                version {v.version} · {v.state} · {(v.size_bytes / 1024).toFixed(1)} KiB · {when(v.created_at)}{" "}
                <button type="button" onClick={() => void download(open, v.version)}>
                  Download version {v.version}
                </button>
              </li>
            ))}
          </ul>
        </section>
      )}
    </main>
  );
}
