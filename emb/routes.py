"""The embedding service's endpoints."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from emb.batching import QueueFull
from emb.encoder import Encoded
from emb.replica import ReplicaExited
from emb.runtime import EmbRuntime, ServedModel
from haven import lexical
from haven.contracts import embeddings as contracts
from models.loader import ModelIntegrityError
from models.registry import ModelNotFound, RegistryError

router = APIRouter()


async def get_runtime(request: Request) -> EmbRuntime:
    # async: FastAPI runs a plain-def dependency on its thread pool, a thread hop per request.
    runtime: EmbRuntime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[EmbRuntime, Depends(get_runtime)]


class Unavailable(HTTPException):
    """503 with Retry-After: not ready yet, or the queue is full."""

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail, {"Retry-After": str(retry_after)}
        )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    body = {"status": "ready" if runtime.ready else runtime.state, "reason": runtime.reason}
    return JSONResponse(body, status_code=200 if runtime.ready else 503)


@router.get("/info")
async def info(runtime: RuntimeDep) -> dict[str, Any]:
    settings = runtime.settings
    return {
        "service": "emb",
        "state": runtime.state,
        "reason": runtime.reason,
        "models": [
            {
                **_served(model).model_dump(),
                "format": model.local.manifest.format,
                "files": [f.model_dump() for f in model.local.manifest.files],
            }
            for model in runtime.models.values()
        ],
        "limits": {
            "replicas": settings.emb_replicas,
            "torch_threads": settings.emb_torch_threads,
            "max_batch_size": settings.emb_max_batch_size,
            "max_wait_ms": settings.emb_max_wait_ms,
            "encode_batch_size": settings.emb_encode_batch_size,
            "max_queue": settings.emb_max_queue,
            "max_items_per_request": settings.emb_max_items_per_request,
        },
        "sparse": {"analyzer": lexical.ANALYZER_ID, "bm25": vars(settings.bm25)},
    }


@router.get("/metrics")
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# The embedding endpoints answer with JSON they serialise themselves (orjson, straight from the
# float32 arrays) rather than returning pydantic models, which FastAPI would validate again and
# serialise through a list of Python floats: 12 instead of 40 us of event-loop time for one
# text, 3 instead of 10 ms for 256. The bodies follow the contracts named as response_model,
# which also document them in the OpenAPI schema.


@router.post("/embed", response_model=contracts.EmbedResponse)
async def embed(body: contracts.EmbedRequest, runtime: RuntimeDep) -> Response:
    models = await _select(
        runtime, body.aliases or list(runtime.settings.emb_aliases), body.pins or {}
    )
    _check_count(runtime, len(body.texts))
    encoded = await _encode_all(runtime, models, body.texts, body.input_type)
    sparse = None
    if body.sparse is not None:
        sparse = await asyncio.to_thread(_sparse_vectors, runtime, body.texts, body.sparse)
    return _json(
        {
            "models": [_served(m).model_dump() for m in models],
            "data": [
                {
                    "index": i,
                    "dense": {m.alias: encoded[m.alias].vectors[i] for m in models},
                    "sparse": None if sparse is None else sparse[i].model_dump(),
                    "truncated": [m.alias for m in models if encoded[m.alias].truncated[i]],
                }
                for i in range(len(body.texts))
            ],
        }
    )


@router.post("/v1/embeddings", response_model=contracts.OpenAIEmbeddingResponse)
async def openai_embeddings(
    body: contracts.OpenAIEmbeddingRequest, runtime: RuntimeDep
) -> Response:
    [model] = await _select(runtime, [body.model], {})
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "input must not be empty")
    if body.dimensions is not None and body.dimensions != model.dimension:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{model.alias} has {model.dimension} dimensions; other sizes are not served",
        )
    _check_count(runtime, len(texts))
    encoded = (await _encode_all(runtime, [model], texts, body.input_type))[model.alias]
    tokens = sum(encoded.tokens)
    return _json(
        {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": _base64(vector) if body.encoding_format == "base64" else vector,
                }
                for i, vector in enumerate(encoded.vectors)
            ],
            "model": model.alias,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            "truncated": [i for i, cut in enumerate(encoded.truncated) if cut],
        }
    )


@router.get("/v1/models")
async def openai_models(runtime: RuntimeDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": alias, "object": "model", "owned_by": "haven"} for alias in runtime.models],
    }


async def _select(
    runtime: EmbRuntime, aliases: list[str], pins: dict[str, str]
) -> list[ServedModel]:
    if not runtime.ready:
        raise Unavailable(f"not ready: {runtime.reason}", runtime.settings.emb_retry_after_seconds)
    unknown = [a for a in aliases if a not in runtime.models]
    if unknown:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"unknown model alias {', '.join(map(repr, unknown))}; served: "
            + ", ".join(runtime.models),
        )
    selected = []
    for alias in dict.fromkeys(aliases):
        pin = pins.get(alias)
        model = runtime.served(alias, pin)
        if model is None and pin is not None:
            try:
                model = await runtime.pinned(alias, pin)
            except (ModelNotFound, ValueError) as exc:  # not published, malformed, not embed
                raise HTTPException(
                    status.HTTP_404_NOT_FOUND, f"cannot embed with {pin!r}: {exc}"
                ) from exc
            except (RegistryError, ModelIntegrityError) as exc:  # the store or the files
                raise Unavailable(
                    f"cannot load {pin!r}: {exc}", runtime.settings.emb_retry_after_seconds
                ) from exc
        assert model is not None
        selected.append(model)
    return selected


@router.post("/warm")
async def warm(body: contracts.WarmRequest, runtime: RuntimeDep) -> dict[str, Any]:
    """Download these model versions into the cache (not loaded): a later alias switch or
    pin finds them local (the ``warmup`` maintenance task)."""
    try:
        done = await asyncio.to_thread(runtime.warm, body.models)
    except (RegistryError, ValueError) as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    return {"cached": done}


def _check_count(runtime: EmbRuntime, count: int) -> None:
    limit = runtime.settings.emb_max_items_per_request
    if count > limit:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{count} texts in one request; at most {limit} are accepted",
        )


async def _encode_all(
    runtime: EmbRuntime,
    models: list[ServedModel],
    texts: list[str],
    input_type: Literal["query", "passage"] | None = None,
) -> dict[str, Encoded]:
    try:
        results = await asyncio.gather(
            *(m.batcher.embed(_prefixed(m, texts, input_type)) for m in models)
        )
    except QueueFull as exc:
        raise Unavailable(f"overloaded: {exc}", runtime.settings.emb_retry_after_seconds) from exc
    except ReplicaExited as exc:
        runtime.replica_exited(str(exc))
        raise Unavailable(str(exc), runtime.settings.emb_retry_after_seconds) from exc
    for model, result in zip(models, results, strict=True):
        runtime.metrics.texts.labels(model.alias).inc(len(texts))
        if cut := sum(result.truncated):
            runtime.metrics.truncated.labels(model.alias).inc(cut)
    return {m.alias: r for m, r in zip(models, results, strict=True)}


def _prefixed(
    model: ServedModel, texts: list[str], input_type: Literal["query", "passage"] | None
) -> list[str]:
    """The texts as ``model`` is meant to see them: with the query or passage prefix its
    manifest declares (E5's "query: " / "passage: "); unchanged for a model without."""
    manifest = model.local.manifest
    prefix = {
        "query": manifest.query_prefix,
        "passage": manifest.passage_prefix,
        None: "",
    }[input_type]
    return [prefix + text for text in texts] if prefix else texts


def _sparse_vectors(
    runtime: EmbRuntime, texts: list[str], kind: str
) -> list[contracts.SparseVector]:
    if kind == "query":
        return [lexical.query_vector(text) for text in texts]
    bm25 = runtime.settings.bm25
    return [lexical.document_vector(text, bm25) for text in texts]


def _served(model: ServedModel) -> contracts.ServedModel:
    manifest = model.local.manifest
    return contracts.ServedModel(
        alias=model.alias,
        name=manifest.name,
        version=manifest.version,
        dimension=model.dimension,
        max_seq_length=model.max_seq_length,
        languages=manifest.languages,
        query_prefix=manifest.query_prefix,
        passage_prefix=manifest.passage_prefix,
    )


def _base64(vector: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def _json(content: dict[str, Any]) -> Response:
    # float32 arrays are written as the shortest decimals that read back as the same float32.
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )
