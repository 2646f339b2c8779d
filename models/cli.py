"""``haven models``: publish, list, alias, roll back and verify models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from models.defaults import (
    DEFAULT_EMBED_ALIAS,
    DEFAULT_LLM_ALIAS,
    publish_default_embedding,
    publish_default_llm,
)
from models.loader import ModelCache, ModelIntegrityError
from models.manifest import Manifest
from models.registry import ModelRegistry, RegistryError
from models.settings import ModelStoreSettings
from models.store import registry_from_settings

app = typer.Typer(
    help="Models in the object store: publish, alias, roll back.", no_args_is_help=True
)


def _registry() -> ModelRegistry:
    try:
        return registry_from_settings(ModelStoreSettings())
    except RegistryError as exc:
        _fail(str(exc))


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _describe(manifest: Manifest) -> str:
    return (
        f"{manifest.name}/{manifest.version} type={manifest.type} format={manifest.format}"
        f" files={len(manifest.files)} size={manifest.total_size}"
    )


@app.command("publish")
def publish(
    path: Annotated[Path, typer.Argument(help="model folder or single file")],
    name: Annotated[str, typer.Option(help="model name")],
    version: Annotated[str, typer.Option(help="model version (immutable once published)")],
    type_: Annotated[str, typer.Option("--type", help="embed, llm or sparse")],
    format_: Annotated[
        str | None, typer.Option("--format", help="sentence-transformers, onnx or gguf")
    ] = None,
    alias: Annotated[str | None, typer.Option(help="point this alias at the version")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="extra parameter KEY=VALUE (repeatable)")
    ] = None,
) -> None:
    """Checksum and upload a model; the manifest is written last."""
    parameters: dict[str, object] = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--param {item!r} is not KEY=VALUE", 2)
        parameters[key] = int(value) if value.isdigit() else value
    registry = _registry()
    try:
        manifest = registry.publish(
            path,
            name=name,
            version=version,
            type=type_,
            format=format_,
            alias=alias,
            parameters=parameters,
        )
    except (RegistryError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    typer.echo(f"published {_describe(manifest)}" + (f" alias={alias}" if alias else ""))


@app.command("publish-defaults")
def publish_defaults(alias: str = DEFAULT_EMBED_ALIAS, llm_alias: str = DEFAULT_LLM_ALIAS) -> None:
    """Publish the bundled default models (all-MiniLM-L6-v2, SmolLM2-135M-Instruct and
    Gemma 3 270M); safe to repeat."""
    registry = _registry()
    manifest = publish_default_embedding(registry, alias)
    typer.echo(f"default embedding model {_describe(manifest)}")
    manifest = publish_default_llm(registry, llm_alias)
    typer.echo(f"default generation model {_describe(manifest)}")


@app.command("list")
def list_models() -> None:
    """Published versions and the aliases pointing at them."""
    registry = _registry()
    pointing: dict[str, list[str]] = {}
    for record in registry.aliases():
        pointing.setdefault(f"{record.name}/{record.version}", []).append(record.alias)
    for manifest in registry.list():
        aliases = ",".join(pointing.get(manifest.ref, [])) or "-"
        typer.echo(f"{_describe(manifest)} aliases={aliases} created={manifest.created_at:%F %T}")


@app.command("alias")
def alias(alias: str, name: str, version: str) -> None:
    """Point ALIAS at NAME/VERSION (takes effect when services restart)."""
    try:
        _registry().set_alias(alias, name, version)
    except (RegistryError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"{alias} -> {name}/{version}")


@app.command("rollback")
def rollback(alias: str) -> None:
    """Point ALIAS back at the version it pointed at before."""
    try:
        manifest = _registry().rollback(alias)
    except (RegistryError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(f"{alias} -> {manifest.ref}")


@app.command("verify")
def verify(
    alias: str,
    remote: Annotated[
        bool, typer.Option(help="also re-hash the objects in the bucket, not only the cache")
    ] = False,
) -> None:
    """Re-hash the local cached copy of ALIAS against its manifest (downloading and
    verifying it if it is not cached yet)."""
    settings = ModelStoreSettings()
    registry = _registry()
    cache = ModelCache(registry, settings.model_cache_dir)
    try:
        manifest = registry.resolve(alias)
        if remote and (damaged := registry.damaged_files(manifest)):
            _fail(f"{manifest.ref}: damaged in the bucket: {', '.join(damaged)}")
        local = cache.verify(alias) if cache.contains(manifest) else cache.fetch(alias)
    except ModelIntegrityError as exc:
        _fail(f"integrity check failed for file {exc.path}: {exc}")
    except RegistryError as exc:
        _fail(str(exc))
    typer.echo(f"ok {_describe(local.manifest)} at {local.path}")


@app.command("optimize")
def optimize(
    source: Annotated[str, typer.Argument(help="alias, or NAME/VERSION, of an embedding model")],
    version: Annotated[str, typer.Option(help="version to publish the ONNX variant as")],
    name: Annotated[str | None, typer.Option(help="model name (default: the source's)")] = None,
    quantize: Annotated[
        bool, typer.Option("--quantize/--fp32", help="dynamic int8 quantisation, or fp32 only")
    ] = True,
    ops: Annotated[
        str, typer.Option(help="what is quantised: ffn, or ffn+attention (projections)")
    ] = "ffn+attention",
    keep_last_layers: Annotated[
        int, typer.Option(help="last transformer layers left in fp32", min=0)
    ] = 0,
    outlier_ratio: Annotated[
        float,
        typer.Option(
            help="input channels peaking above this multiple of the median channel are kept"
            " out of the int8 step (fp32 or rescaled); 0 quantises them with the rest",
            min=0,
        ),
    ] = 4.0,
    per_channel: Annotated[bool, typer.Option(help="one weight scale per channel")] = True,
    reduce_range: Annotated[
        bool, typer.Option(help="7-bit weights (avoids saturation on CPUs without VNNI)")
    ] = True,
    min_cosine: Annotated[
        float | None,
        typer.Option(
            help="refuse to publish below this mean cosine to PyTorch (default 0.99"
            " quantised, 0.999 fp32)"
        ),
    ] = None,
    alias: Annotated[str | None, typer.Option(help="point this alias at the new version")] = None,
) -> None:
    """Export a published sentence-transformers model to ONNX (optionally int8), check its
    vectors against PyTorch's and publish it as a new version — offline, from the cache."""
    import tempfile

    from models import optimize as optimizer

    if ops not in ("ffn", "ffn+attention"):
        _fail(f"--ops {ops!r}: expected ffn or ffn+attention", 2)
    settings = ModelStoreSettings()
    registry = _registry()
    cache = ModelCache(registry, settings.model_cache_dir)
    try:
        if "/" in source:
            source_name, _, source_version = source.partition("/")
            manifest = registry.manifest(source_name, source_version)
        else:
            manifest = registry.resolve(source)
        if manifest.format != "sentence-transformers" or manifest.type != "embed":
            _fail(
                f"{manifest.ref} is {manifest.type}/{manifest.format}, not a"
                " sentence-transformers embedding model"
            )
        local = cache.fetch_version(manifest)
    except ModelIntegrityError as exc:
        _fail(f"integrity check failed for file {exc.path}: {exc}")
    except RegistryError as exc:
        _fail(str(exc))
    options = (
        optimizer.QuantizeOptions(
            ops=ops,  # type: ignore[arg-type]
            per_channel=per_channel,
            reduce_range=reduce_range,
            keep_last_layers=keep_last_layers,
            outlier_ratio=outlier_ratio or None,
        )
        if quantize
        else None
    )
    floor = min_cosine if min_cosine is not None else (0.99 if quantize else 0.999)
    with tempfile.TemporaryDirectory(prefix="haven-optimize-") as tmp:
        exported = optimizer.export(
            local.path, Path(tmp) / "model", quantize=options, check_texts=optimizer.CHECK_TEXTS
        )
        variant = exported.quantization["name"] if exported.quantization else "fp32"
        typer.echo(
            f"{manifest.ref} -> onnx {variant}:"
            f" cosine to PyTorch mean {exported.cosine_mean:.4f} min {exported.cosine_min:.4f}"
            f" over {len(optimizer.CHECK_TEXTS)} texts"
        )
        if exported.cosine_mean < floor:
            _fail(f"mean cosine {exported.cosine_mean:.4f} is below {floor}; not published")
        try:
            published = registry.publish(
                exported.folder,
                name=name or manifest.name,
                version=version,
                type="embed",
                format="onnx",
                alias=alias,
                parameters={
                    "source": manifest.ref,
                    "cosine_to_source": round(exported.cosine_mean, 5),
                },
            )
        except (RegistryError, ValueError) as exc:
            _fail(str(exc))
    typer.echo(f"published {_describe(published)}" + (f" alias={alias}" if alias else ""))
