// Uploads: small files as one multipart request to the API; large ones straight to the object
// store through a presigned POST (POST /api/v1/documents/uploads, the file, then .../complete),
// so a 100 MB file never passes through the API process. XMLHttpRequest, not fetch, because
// only it reports upload progress.
import { api, must, problemOf, type Schemas } from "@/api/client";
import { currentToken } from "@/lib/token";

export type Accepted = Schemas["UploadAccepted"];

/** Files at least this large go through the presigned path. */
export const PRESIGNED_FROM_BYTES = 8 * 1024 * 1024;

function send(
  url: string,
  form: FormData,
  onProgress: (fraction: number) => void,
  withToken: boolean,
): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    const token = currentToken();
    if (withToken && token) xhr.setRequestHeader("Authorization", `Bearer ${token}`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      let body: unknown = null;
      try {
        body = xhr.responseText ? JSON.parse(xhr.responseText) : null;
      } catch {
        body = { detail: xhr.responseText.slice(0, 300) };
      }
      resolve({ status: xhr.status, body });
    };
    xhr.onerror = () => reject(new Error("the upload was interrupted"));
    xhr.send(form);
  });
}

export async function upload(file: File, onProgress: (fraction: number) => void): Promise<Accepted> {
  if (file.size < PRESIGNED_FROM_BYTES) {
    const form = new FormData();
    form.append("file", file, file.name);
    const { status, body } = await send("/api/v1/documents", form, onProgress, true);
    if (status < 200 || status >= 300) {
      throw problemOf(body, new Response(null, { status }));
    }
    return body as Accepted;
  }
  const slot = await must(
    api.POST("/api/v1/documents/uploads", {
      body: { filename: file.name, mime: file.type || null },
    }),
  );
  if (file.size > slot.max_bytes) {
    throw { status: 413, detail: `the file is over the limit of ${slot.max_bytes} bytes` };
  }
  const form = new FormData();
  for (const [key, value] of Object.entries(slot.fields)) form.append(key, value);
  form.append("file", file, file.name);
  const stored = await send(slot.url, form, onProgress, false);
  if (stored.status < 200 || stored.status >= 300) {
    throw { status: stored.status, detail: "the object store refused the file" };
  }
  return must(
    api.POST("/api/v1/documents/uploads/{upload_id}/complete", {
      params: { path: { upload_id: slot.upload_id } },
    }),
  );
}

export type Job = Schemas["JobRead"];

/** The ingest pipeline's step, from the job's state and progress (workers/ingest/pipeline.py
 * reports 1 after the download, 2 after extraction, 3 after chunking, 4 after embedding). */
export function stageOf(job: Job): string {
  if (job.state === "queued") return "queued";
  if (job.state === "ready") return "ready";
  if (job.state === "failed") return "failed";
  if (job.state === "canceled") return "canceled";
  switch (job.progress_done) {
    case 0:
    case 1:
      return "extracting";
    case 2:
      return "chunking";
    case 3:
      return "embedding";
    default:
      return "indexing";
  }
}
