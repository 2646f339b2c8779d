"use client";

import ReactMarkdown from "react-markdown";
import rehypeHighlight from "rehype-highlight";

// `[n]` markers become links to #cite-n, drawn as buttons that open the passage; only for
// numbers the answer has a citation for. Code spans and blocks keep their brackets.
function linkCitations(text: string, known: Set<number>): string {
  const parts = text.split(/(```[\s\S]*?```|`[^`\n]*`)/g);
  return parts
    .map((part, i) =>
      i % 2 === 1
        ? part
        : part.replace(/\[(\d{1,3})\]/g, (whole, n: string) =>
            known.has(Number(n)) ? `[\\[${n}\\]](#cite-${n})` : whole,
          ),
    )
    .join("");
}

export function Markdown({
  text,
  citations,
  onCite,
}: {
  text: string;
  citations: Set<number>;
  onCite: (n: number) => void;
}) {
  return (
    <div className="markdown">
      <ReactMarkdown
        rehypePlugins={[rehypeHighlight]}
        components={{
          a({ href, children }) {
            const match = /^#cite-(\d+)$/.exec(href ?? "");
            if (match) {
              const n = Number(match[1]);
              return (
                <button
                  type="button"
                  className="cite"
                  aria-label={`Open source ${n}`}
                  onClick={() => onCite(n)}
                >
                  {n}
                </button>
              );
            }
            return (
              <a href={href} target="_blank" rel="noreferrer noopener">
                {children}
              </a>
            );
          },
        }}
      >
        {linkCitations(text, citations)}
      </ReactMarkdown>
    </div>
  );
}
