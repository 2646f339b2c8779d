"""The analyze pipeline's prompts and its Markdown artifact."""

from __future__ import annotations

import json
from typing import Any

from haven.db.tables import AnalysisKind

# Room kept for the note that asks an ``extract`` part to answer again (its error is cut to
# a few hundred characters).
RETRY_NOTE_TOKENS = 160

_MAP_SYSTEM = {
    AnalysisKind.SUMMARY: (
        "You summarise a part of a document faithfully and concisely. Use only the text "
        "given. Answer in plain prose."
    ),
    AnalysisKind.CUSTOM: (
        "You apply the user's instructions to a part of a document. Use only the text given."
    ),
    AnalysisKind.EXTRACT: (
        "You extract data from a part of a document. Answer with JSON only, no prose, that "
        "validates against this JSON Schema:\n{schema}"
    ),
}
_DEFAULT_INSTRUCTIONS = {
    AnalysisKind.SUMMARY: "Summarise this part of the document.",
    AnalysisKind.CUSTOM: "",
    AnalysisKind.EXTRACT: "Extract the data the schema describes from this text.",
}
_REDUCE_SYSTEM = (
    "You combine partial results, each from a part of the same documents, into one answer. "
    "Keep the page references in brackets, like [Title, pp. 3-5], next to what they support."
)


def map_messages(
    kind: AnalysisKind,
    instructions: str | None,
    schema: dict[str, Any] | None,
    label: str,
    text: str,
) -> list[dict[str, str]]:
    system = _MAP_SYSTEM[kind]
    if kind is AnalysisKind.EXTRACT:
        system = system.format(schema=json.dumps(schema, ensure_ascii=False))
    task = instructions or _DEFAULT_INSTRUCTIONS[kind]
    user = f"{task}\n\nText from {label}:\n\n{text}"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def retry_messages(messages: list[dict[str, str]], answer: str, error: str) -> list[dict[str, str]]:
    note = (
        f"That answer is not valid: {error[:300]}. Answer again with JSON only that validates "
        "against the schema."
    )
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": note}]


def render_partial(text: str, covers: list[dict[str, Any]]) -> str:
    where = "; ".join(str(c["label"]) for c in covers)
    return f"[{where}]\n{text}"


def reduce_messages(
    kind: AnalysisKind, instructions: str | None, partials: list[str]
) -> list[dict[str, str]]:
    task = instructions or _DEFAULT_INSTRUCTIONS[kind] or "Combine them."
    if kind is AnalysisKind.SUMMARY:
        task = f"{task} Combine these partial summaries into one summary."
    body = "\n\n".join(partials)
    user = f"{task}\n\nPartial results:\n\n{body}"
    return [{"role": "system", "content": _REDUCE_SYSTEM}, {"role": "user", "content": user}]


def markdown(document: dict[str, Any]) -> str:
    """The artifact people read: the result, then where every part of it came from."""
    model = document["model"]
    params = document["parameters"]
    result = document["result"]
    lines = [
        f"# Analysis ({document['kind']})",
        "",
        f"- Analysis: `{document['analysis_id']}`, created {document['created_at']}",
        f"- Model: {model.get('name') or model.get('alias')} version {model.get('version')} "
        f"(alias `{model.get('alias')}`, sha256 `{model.get('sha256')}`, "
        f"context {model.get('context_length')} tokens)",
        f"- Parameters: temperature {params['temperature']}, seed {params['seed']}, "
        f"map answer {params['map_tokens']} tokens, reduce answer {params['reduce_tokens']} "
        "tokens",
    ]
    if params.get("instructions"):
        lines.append(f"- Instructions: {params['instructions']}")
    lines.append("- Sources:")
    for source in document["sources"]:
        lines.append(
            f"  - {source['title']} (document `{source['document_id']}`, version "
            f"{source['version']}, sha256 `{source['content_sha256']}`)"
        )
    lines += ["", "## Result", ""]
    if document["kind"] == AnalysisKind.EXTRACT.value:
        lines += ["```json", json.dumps(result.get("data"), ensure_ascii=False, indent=2), "```"]
        if result.get("error"):
            lines += ["", f"Not valid against the schema: {result['error']}"]
    else:
        lines.append(result.get("text") or "(empty)")
    lines += ["", "## Sources cited", ""]
    for number, cover in enumerate(result.get("citations", []), start=1):
        lines.append(f"{number}. {cover['label']}")
    lines += ["", "## Parts", ""]
    for part in document["parts"]:
        state = " — FAILED" if part["failed"] else ""
        lines += [f"### Part {part['part']}: {part['label']}{state}", ""]
        if part["failed"]:
            lines.append(f"The answer did not validate against the schema: {part['error']}")
            lines.append("")
        lines += [part.get("text") or "(empty)", ""]
    return "\n".join(lines).rstrip() + "\n"
