"use client";

import { useEffect, useRef } from "react";
import type { CitationView } from "./types";

/** The cited passage: document, version, page and the quoted text. */
export function CitationDialog({
  citation,
  onClose,
}: {
  citation: CitationView | null;
  onClose: () => void;
}) {
  const ref = useRef<HTMLDialogElement | null>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (citation && !dialog.open) dialog.showModal();
    if (!citation && dialog.open) dialog.close();
  }, [citation]);
  return (
    <dialog ref={ref} className="citation" aria-labelledby="citation-title" onClose={onClose}>
      {citation && (
        <div className="stack" data-testid="citation">
          <h2 id="citation-title">
            [{citation.n}] {citation.title ?? "Untitled"}
          </h2>
          <p className="muted">
            {citation.version ? `version ${citation.version}` : ""}
            {citation.page ? ` · page ${citation.page}` : ""}
          </p>
          {citation.text ? (
            <blockquote data-testid="citation-text">{citation.text}</blockquote>
          ) : (
            <p className="muted">This answer was stored without the passage&apos;s text.</p>
          )}
          <form method="dialog">
            <button type="submit" className="primary" autoFocus>
              Close
            </button>
          </form>
        </div>
      )}
    </dialog>
  );
}
