"""The analyze pipeline of one analysis: extract → cut → map → reduce → artifact.

Each document version is extracted again from its raw object (the same extractor as ingest,
so its pages are the ones ingest saw), cut into parts that fit the model's context in the
model's own tokens (``workers.analyze.split``), and each part is mapped (one llm call); the
partial results are reduced in a tree (groups that fit the context, one call each) until one
remains. A text that fits is done in one call.

Every map and reduce result is stored (``analysis_steps``) under a key of what determines it:
document version + content hash + step + parameters' hash + model identity. A run looks a
step up before calling the model, so a killed job redoes only the steps without a row (and
the call that was in flight), and the same request again makes no call at all, unless the
analysis asks for ``force`` (then only rows written since it was created count).

The artifact (Markdown, and JSON for ``extract``) goes to the object store under the
tenant's prefix, with the model's name, version and sha256, the parameters, the source
versions and the pages each part came from; the analysis row points at it, written in the
transaction that finishes the job.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from jsonschema import exceptions as schema_errors
from jsonschema import validators
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from haven.db.engine import transaction
from haven.db.tables import Analysis, AnalysisKind, AnalysisStep
from haven.llm_client import Sampling, TokenCounts
from haven.storage import download, tenant_key
from workers.analyze import prompts
from workers.analyze.llm import AnalyzeLlm, run_principal
from workers.analyze.split import SEPARATOR_TOKENS, Part, Unit, cut_words, pack, units_of
from workers.ingest.normalize import normalize_blocks
from workers.ingest.pool import extract_isolated
from workers.jobs.handler import Claim, finish
from workers.jobs.heartbeat import Heartbeat, JobCanceled
from workers.runtime import WorkerRuntime

log = structlog.get_logger("haven.analyze")

# Changing a prompt or how results are built changes this, so no stored step is reused.
STEP_FORMAT = 1
# Tokens kept free besides the answer, for what joining units may add.
MARGIN = 16
# Rounds of re-packing a document whose parts came out too long once templated.
REPACK_ROUNDS = 4
# Fewest tokens of text a part may hold: a smaller context cannot analyse anything.
MIN_PART_TOKENS = 32
ERROR_CHARS = 300
# A reduce tree deeper than this means combining does not shrink the results.
MAX_LEVELS = 32


class AnalyzeError(Exception):
    """The analysis itself cannot be done (running it again cannot help)."""

    code = "analyze.failed"


class TooManyTokens(AnalyzeError):
    code = "analyze.too_large"


class ContextTooSmall(AnalyzeError):
    code = "analyze.context_too_small"


@dataclass(frozen=True)
class Source:
    document_id: uuid.UUID
    version: int
    version_id: uuid.UUID
    content_sha256: str
    title: str
    mime: str
    object_key: str

    @classmethod
    def of(cls, row: dict[str, Any]) -> Source:
        return cls(
            document_id=uuid.UUID(row["document_id"]),
            version=int(row["version"]),
            version_id=uuid.UUID(row["version_id"]),
            content_sha256=str(row["content_sha256"]),
            title=str(row["title"]),
            mime=str(row["mime"]),
            object_key=str(row["object_key"]),
        )


@dataclass(frozen=True)
class Subject:
    analysis_id: uuid.UUID
    tenant_id: uuid.UUID
    created_by: uuid.UUID | None
    kind: AnalysisKind
    instructions: str | None
    schema: dict[str, Any] | None
    sources: list[Source]
    force: bool
    created_at: datetime

    @classmethod
    def of(cls, analysis: Analysis) -> Subject:
        return cls(
            analysis_id=analysis.id,
            tenant_id=analysis.tenant_id,
            created_by=analysis.created_by,
            kind=AnalysisKind(analysis.kind),
            instructions=analysis.instructions,
            schema=analysis.output_schema,
            sources=[Source.of(row) for row in analysis.sources],
            force=analysis.force,
            created_at=analysis.created_at,
        )


@dataclass
class Item:
    """A result on its way up the reduce tree: its text, the step that made it, and the
    parts (document, pages) it covers."""

    key: str
    text: str
    covers: list[dict[str, Any]]


@dataclass
class MapResult:
    key: str
    source: int
    part: Part
    output: dict[str, Any]


@dataclass
class Totals:
    calls: int = 0
    reused: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def step_key(step: str, what: dict[str, Any], params_hash: str, model: str) -> str:
    body = json.dumps(
        {"format": STEP_FORMAT, "step": step, "what": what, "params": params_hash, "model": model},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


def artifact_keys(tenant_id: uuid.UUID, analysis_id: uuid.UUID) -> tuple[str, str]:
    base = ("analyses", str(analysis_id))
    return tenant_key(tenant_id, *base, "result.md"), tenant_key(tenant_id, *base, "result.json")


def parse_json(text: str) -> Any:
    """The first JSON object or array in a model's answer."""
    decoder = json.JSONDecoder()
    for index, char in enumerate(text):
        if char in "{[":
            try:
                value, _ = decoder.raw_decode(text, index)
            except ValueError:
                continue
            return value
    raise ValueError("the answer holds no JSON object or array")


def schema_error(schema: dict[str, Any], value: Any) -> str | None:
    """Why ``value`` does not validate against ``schema``; None when it does."""
    validator = validators.validator_for(schema)(schema)
    try:
        error = schema_errors.best_match(validator.iter_errors(value))
    except Exception as exc:  # a $ref that resolves to nothing, found only while validating
        return f"the schema could not be applied: {str(exc)[:ERROR_CHARS]}"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    message = str(error.message)[:ERROR_CHARS]
    return (f"at /{where}: " if where else "") + message


def merge_values(values: list[Any]) -> Any:
    """Partial extractions into one: arrays concatenated (without exact repeats), objects
    merged key by key the same way, anything else the first non-empty value."""
    values = [v for v in values if v not in (None, "", [], {})]
    if not values:
        return None
    if all(isinstance(v, list) for v in values):
        merged: list[Any] = []
        seen: set[str] = set()
        for value in values:
            for item in value:
                mark = json.dumps(item, sort_keys=True, default=str)
                if mark not in seen:
                    seen.add(mark)
                    merged.append(item)
        return merged
    if all(isinstance(v, dict) for v in values):
        keys: list[str] = []
        for value in values:
            keys.extend(k for k in value if k not in keys)
        return {k: merge_values([v.get(k) for v in values]) for k in keys}
    return values[0]


class AnalyzeRun:
    def __init__(self, rt: WorkerRuntime, claim: Claim, beat: Heartbeat) -> None:
        self.rt = rt
        self.claim = claim
        self.beat = beat
        self.subject: Subject = claim.subject
        self.settings = rt.settings
        self.totals = Totals()

    # --- the run ----------------------------------------------------------------------------

    def run(self) -> None:
        s = self.subject
        llm = AnalyzeLlm(
            self.rt,
            self.beat,
            run_principal(s.tenant_id, s.created_by, self.claim.job_id),
            request_id=str(s.analysis_id),
        )
        try:
            self._run(llm)
        finally:
            llm.close()

    def _run(self, llm: AnalyzeLlm) -> None:
        s = self.subject
        self.llm = llm
        probe = llm.tokens([], [{"role": "user", "content": "?"}])
        self.context = probe.context_length
        self.model = {
            "alias": probe.model,
            "name": probe.name,
            "version": probe.version,
            "sha256": probe.sha256,
            "identity": probe.identity,
            "context_length": probe.context_length,
        }
        self.identity = probe.identity
        self.parameters = {
            "kind": s.kind.value,
            "instructions": s.instructions,
            "schema": s.schema,
            "map_tokens": self.settings.analyze_map_tokens,
            "reduce_tokens": self.settings.analyze_reduce_tokens,
            "temperature": self.settings.analyze_temperature,
            "seed": self.settings.analyze_seed,
        }
        self.params_hash = hashlib.sha256(
            json.dumps(self.parameters, sort_keys=True, default=str).encode()
        ).hexdigest()
        self._phase("extract")

        cut: list[tuple[int, Part]] = []
        tokens = 0
        for number, source in enumerate(s.sources):
            units = units_of(self._extract(source))
            self.beat()
            parts = self._cut(llm, source, units)
            tokens += sum(p.tokens for p in parts)
            if tokens > self.settings.analyze_max_input_tokens:
                raise TooManyTokens(
                    f"the documents hold more than {self.settings.analyze_max_input_tokens} "
                    "tokens, the limit of one analysis"
                )
            cut.extend((number, part) for part in parts)
            self.beat()
        self.totals.extra["input_tokens"] = tokens

        self._phase("map")
        self.beat(done=0, total=max(len(cut), 1))
        self.beat.write()
        mapped: list[MapResult] = []
        for done, (number, part) in enumerate(cut, start=1):
            mapped.append(self._map(llm, number, part))
            self.beat(done=done, total=len(cut))

        if s.kind is AnalysisKind.EXTRACT:
            result = self._merge(mapped)
        else:
            result = self._reduce(llm, mapped)
        self._store_artifact(mapped, result)

    # --- extract and cut --------------------------------------------------------------------

    def _extract(self, source: Source) -> list[Any]:
        with tempfile.TemporaryDirectory(prefix="haven-analyze-") as tmp:
            path = Path(tmp) / "raw"
            download(self.rt.s3, self.settings.s3_bucket, source.object_key, path)
            self.beat()
            return normalize_blocks(extract_isolated(path, source.mime, self.settings))

    def _map_messages(self, source: Source, part: Part) -> list[dict[str, str]]:
        s = self.subject
        return prompts.map_messages(
            s.kind, s.instructions, s.schema, self._label(source, part), part.text
        )

    def _label(self, source: Source, part: Part) -> str:
        pages = part.pages or f"part {part.index + 1}"
        return f"{source.title} (version {source.version}, {pages})"

    def _answer_room(self) -> int:
        """Context kept for the answer: an ``extract`` part may need a second answer."""
        tokens = self.settings.analyze_map_tokens
        if self.subject.kind is AnalysisKind.EXTRACT:
            return 2 * tokens + prompts.RETRY_NOTE_TOKENS
        return tokens

    def _cut(self, llm: AnalyzeLlm, source: Source, units: list[Unit]) -> list[Part]:
        if not units:
            return []
        worst = Part(0, 99999, 99999, "", 0)
        overhead = self._prompt_tokens(llm, self._map_messages(source, worst))
        limit = self.context - self._answer_room() - MARGIN
        budget = limit - overhead
        if budget < MIN_PART_TOKENS:
            raise ContextTooSmall(
                f"the model's context ({self.context} tokens) leaves no room for the text "
                "once the instructions and the answer are counted"
            )
        counts = llm.tokens([u.text for u in units]).counts
        for _ in range(REPACK_ROUNDS):
            units, counts = self._fit_units(llm, units, counts, budget)
            parts = pack(units, counts, budget)
            # The exact prompt of every part, in the model's template.
            lengths = [self._prompt_tokens(llm, self._map_messages(source, p)) for p in parts]
            over = max(length - limit for length in lengths)
            if over <= 0:
                return parts
            budget -= over + SEPARATOR_TOKENS * 4
            if budget < MIN_PART_TOKENS:
                break
        raise ContextTooSmall("the text could not be cut into parts that fit the model")

    def _fit_units(
        self, llm: AnalyzeLlm, units: list[Unit], counts: list[int], budget: int
    ) -> tuple[list[Unit], list[int]]:
        """Every unit within ``budget``: the longer ones cut at word boundaries."""
        while any(count > budget for count in counts):
            fitted: list[Unit] = []
            fitted_counts: list[int] = []
            for unit, count in zip(units, counts, strict=True):
                if count <= budget:
                    fitted.append(unit)
                    fitted_counts.append(count)
                    continue
                pieces = cut_words(unit.text, count, budget)
                fitted.extend(Unit(unit.page, piece) for piece in pieces)
                fitted_counts.extend(llm.tokens(pieces).counts)
            units, counts = fitted, fitted_counts
        return units, counts

    def _prompt_tokens(self, llm: AnalyzeLlm, messages: list[dict[str, str]]) -> int:
        counted: TokenCounts = llm.tokens([], messages)
        assert counted.prompt_tokens is not None
        return counted.prompt_tokens

    # --- stored steps -----------------------------------------------------------------------

    def _stored(self, key: str) -> dict[str, Any] | None:
        with transaction(self.rt.session_factory) as session:
            stmt = select(AnalysisStep).where(
                AnalysisStep.key == key, AnalysisStep.tenant_id == self.subject.tenant_id
            )
            if self.subject.force:  # only what this analysis itself computed
                stmt = stmt.where(AnalysisStep.created_at >= self.subject.created_at)
            row = session.execute(stmt).scalar_one_or_none()
            return None if row is None else dict(row.output)

    def _store(
        self,
        key: str,
        step: str,
        document_id: uuid.UUID | None,
        output: dict[str, Any],
        calls: int,
        usage: tuple[int, int],
    ) -> None:
        values = {
            "key": key,
            "tenant_id": self.subject.tenant_id,
            "document_id": document_id,
            "step": step,
            "output": output,
            "llm_calls": calls,
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "created_at": datetime.now(UTC),
        }
        stmt = pg_insert(AnalysisStep).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={k: stmt.excluded[k] for k in values if k not in ("key", "tenant_id")},
        )
        with transaction(self.rt.session_factory) as session:
            session.execute(stmt)

    def _sampling(self, tokens: int) -> Sampling:
        return Sampling(
            max_tokens=tokens,
            temperature=self.settings.analyze_temperature,
            seed=self.settings.analyze_seed,
        )

    # --- map --------------------------------------------------------------------------------

    def _map(self, llm: AnalyzeLlm, number: int, part: Part) -> MapResult:
        source = self.subject.sources[number]
        key = step_key(
            "map",
            {
                "tenant": str(self.subject.tenant_id),
                "document": str(source.document_id),
                "version": source.version,
                "content_sha256": source.content_sha256,
                "part": part.index,
                "text_sha256": hashlib.sha256(part.text.encode()).hexdigest(),
            },
            self.params_hash,
            self.identity,
        )
        self.totals.steps += 1
        output = self._stored(key)
        if output is not None:
            self.totals.reused += 1
            return MapResult(key, number, part, output)
        messages = self._map_messages(source, part)
        sampling = self._sampling(self.settings.analyze_map_tokens)
        first = llm.complete(messages, sampling)
        calls, usage = 1, [first.prompt_tokens, first.completion_tokens]
        output = {"text": first.text.strip(), "failed": False, "error": None}
        if self.subject.kind is AnalysisKind.EXTRACT:
            assert self.subject.schema is not None
            data, error = self._validated(first.text)
            if error is not None:
                # Once more, told what was wrong; then the part is marked failed.
                retry = prompts.retry_messages(messages, first.text, error)
                second = llm.complete(retry, sampling)
                calls += 1
                usage[0] += second.prompt_tokens
                usage[1] += second.completion_tokens
                data, error = self._validated(second.text)
                output["text"] = second.text.strip()
            output.update(data=data, failed=error is not None, error=error)
        self._store(key, "map", source.document_id, output, calls, (usage[0], usage[1]))
        self.totals.calls += calls
        self.totals.prompt_tokens += usage[0]
        self.totals.completion_tokens += usage[1]
        return MapResult(key, number, part, output)

    def _validated(self, text: str) -> tuple[Any, str | None]:
        assert self.subject.schema is not None
        try:
            value = parse_json(text)
        except ValueError as exc:
            return None, str(exc)
        error = schema_error(self.subject.schema, value)
        return (None, error) if error is not None else (value, None)

    def _covers(self, result: MapResult) -> dict[str, Any]:
        source = self.subject.sources[result.source]
        return {
            "document_id": str(source.document_id),
            "title": source.title,
            "version": source.version,
            "part": result.part.index + 1,
            "pages": [result.part.first_page, result.part.last_page]
            if result.part.first_page is not None
            else None,
            "label": self._label(source, result.part),
        }

    # --- reduce -----------------------------------------------------------------------------

    def _reduce(self, llm: AnalyzeLlm, mapped: list[MapResult]) -> dict[str, Any]:
        items = [Item(m.key, str(m.output.get("text", "")), [self._covers(m)]) for m in mapped]
        if not items:
            return {"text": "", "citations": []}
        s = self.subject
        room = self.settings.analyze_reduce_tokens
        limit = self.context - room - MARGIN
        empty = prompts.reduce_messages(s.kind, s.instructions, [])
        budget = limit - self._prompt_tokens(llm, empty)
        level = 0
        while len(items) > 1:
            if level >= MAX_LEVELS:
                raise ContextTooSmall("the partial results could not be combined in the context")
            counts = llm.tokens([prompts.render_partial(i.text, i.covers) for i in items]).counts
            items, counts = self._shortened(llm, items, counts, budget // 2)
            groups = self._groups(items, counts, budget)
            if all(len(group) == 1 for group in groups):
                raise ContextTooSmall(
                    f"the model's context ({self.context} tokens) cannot hold two partial "
                    "results to combine; lower the answer reserves"
                )
            calls = sum(1 for group in groups if len(group) > 1)
            self._phase("reduce")
            self.beat(done=0, total=calls)
            self.beat.write()
            merged: list[Item] = []
            done = 0
            for group in groups:
                if len(group) == 1:
                    merged.append(group[0])
                    continue
                merged.extend(self._reduce_group(llm, group, level, limit))
                done += 1
                self.beat(done=done, total=calls)
            items = merged
            level += 1
        final = items[0]
        return {"text": final.text, "citations": final.covers}

    def _shortened(
        self, llm: AnalyzeLlm, items: list[Item], counts: list[int], most: int
    ) -> tuple[list[Item], list[int]]:
        """Results longer than half the room are cut, so that any two can be combined (an
        answer of N tokens can take more than N once tokenized again, e.g. broken UTF-8)."""
        for _ in range(REPACK_ROUNDS):
            long = [n for n, count in enumerate(counts) if count > most]
            if not long:
                break
            for n in long:
                item = items[n]
                keep = max(1, int(len(item.text) * most / counts[n] * 0.8))
                items[n] = Item(item.key, item.text[:keep], item.covers)
                log.info("analyze.partial_cut", tokens=counts[n], room=most)
            counts = llm.tokens([prompts.render_partial(i.text, i.covers) for i in items]).counts
        return items, counts

    @staticmethod
    def _groups(items: list[Item], counts: list[int], budget: int) -> list[list[Item]]:
        groups: list[list[Item]] = []
        used = 0
        for item, count in zip(items, counts, strict=True):
            if groups and used + count + SEPARATOR_TOKENS <= budget:
                groups[-1].append(item)
                used += count + SEPARATOR_TOKENS
            else:
                groups.append([item])
                used = count
        return groups

    def _reduce_group(
        self, llm: AnalyzeLlm, group: list[Item], level: int, limit: int
    ) -> list[Item]:
        s = self.subject
        partials = [prompts.render_partial(i.text, i.covers) for i in group]
        messages = prompts.reduce_messages(s.kind, s.instructions, partials)
        if len(group) > 1 and self._prompt_tokens(llm, messages) > limit:
            middle = len(group) // 2  # counted apart, they fit; together, templated, not
            return self._reduce_group(llm, group[:middle], level, limit) + self._reduce_group(
                llm, group[middle:], level, limit
            )
        if len(group) == 1:
            return group
        covers = [c for item in group for c in item.covers]
        key = step_key(
            "reduce",
            {"tenant": str(s.tenant_id), "level": level, "inputs": [i.key for i in group]},
            self.params_hash,
            self.identity,
        )
        self.totals.steps += 1
        output = self._stored(key)
        if output is None:
            answer = llm.complete(messages, self._sampling(self.settings.analyze_reduce_tokens))
            output = {"text": answer.text.strip()}
            usage = (answer.prompt_tokens, answer.completion_tokens)
            self._store(key, "reduce", None, output, 1, usage)
            self.totals.calls += 1
            self.totals.prompt_tokens += usage[0]
            self.totals.completion_tokens += usage[1]
        else:
            self.totals.reused += 1
        return [Item(key, str(output["text"]), covers)]

    # --- extract's merge --------------------------------------------------------------------

    def _merge(self, mapped: list[MapResult]) -> dict[str, Any]:
        assert self.subject.schema is not None
        good = [m for m in mapped if not m.output.get("failed")]
        data = merge_values([m.output.get("data") for m in good])
        error = schema_error(self.subject.schema, data) if data is not None else None
        return {
            "data": data,
            "valid": data is not None and error is None,
            "error": error if data is not None else "no part gave a valid answer",
            "citations": [self._covers(m) for m in good],
        }

    # --- artifact and finish ----------------------------------------------------------------

    def _phase(self, phase: str) -> None:
        with transaction(self.rt.session_factory) as session:
            session.execute(
                update(Analysis)
                .where(
                    Analysis.id == self.subject.analysis_id,
                    Analysis.tenant_id == self.subject.tenant_id,
                )
                .values(phase=phase)
                .execution_options(synchronize_session=False)
            )

    def _store_artifact(self, mapped: list[MapResult], result: dict[str, Any]) -> None:
        s = self.subject
        parts = [
            {
                **self._covers(m),
                "failed": bool(m.output.get("failed")),
                "error": m.output.get("error"),
                "text": m.output.get("text", ""),
                **({"data": m.output.get("data")} if s.kind is AnalysisKind.EXTRACT else {}),
            }
            for m in mapped
        ]
        result = {
            **result,
            "parts": len(parts),
            "failed_parts": sum(1 for p in parts if p["failed"]),
            "steps": self.totals.steps,
            "reused_steps": self.totals.reused,
            "input_tokens": self.totals.extra.get("input_tokens", 0),
            # Times this run waited out a busy generation service (503, with backoff).
            "llm_waits": self.llm.waits,
        }
        sources = [
            {
                "document_id": str(src.document_id),
                "title": src.title,
                "version": src.version,
                "content_sha256": src.content_sha256,
            }
            for src in s.sources
        ]
        document = {
            "analysis_id": str(s.analysis_id),
            "kind": s.kind.value,
            "created_at": s.created_at.isoformat(),
            "model": self.model,
            "parameters": self.parameters,
            "sources": sources,
            "result": result,
            "parts": parts,
        }
        md_key, json_key = artifact_keys(s.tenant_id, s.analysis_id)
        self._put(md_key, prompts.markdown(document).encode(), "text/markdown; charset=utf-8")
        has_json = s.kind is AnalysisKind.EXTRACT
        if has_json:
            body = json.dumps(document, ensure_ascii=False, indent=2, default=str).encode()
            self._put(json_key, body, "application/json")
        stored_result = {k: v for k, v in result.items()}
        with transaction(self.rt.session_factory) as session:
            finish(session, self.claim)
            moved = session.execute(
                update(Analysis)
                .where(Analysis.id == s.analysis_id, Analysis.tenant_id == s.tenant_id)
                .values(
                    phase="done",
                    result=stored_result,
                    model=self.model,
                    artifact_key=md_key,
                    artifact_json_key=json_key if has_json else None,
                    llm_calls=self.totals.calls,
                )
                .execution_options(synchronize_session=False)
            ).rowcount  # type: ignore[attr-defined]
            if not moved:
                raise JobCanceled()  # the analysis was deleted while it ran
        log.info(
            "analyze.ready",
            analysis_id=str(s.analysis_id),
            parts=len(parts),
            calls=self.totals.calls,
            reused=self.totals.reused,
        )

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        self.rt.s3.put_object(
            self.settings.s3_bucket, key, io.BytesIO(body), len(body), content_type=content_type
        )


def discard(rt: WorkerRuntime, tenant_id: uuid.UUID, analysis_id: uuid.UUID) -> None:
    """A canceled or failed analysis has no artifact (its stored steps stay: a retry, or the
    same request again, reuses them)."""
    for key in artifact_keys(tenant_id, analysis_id):
        rt.s3.remove_object(rt.settings.s3_bucket, key)
