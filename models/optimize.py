"""Export a published sentence-transformers model to ONNX, optionally quantised to int8.

``haven models optimize`` runs this offline on a verified local copy of a published model
and publishes the result as a new version through the registry (``format="onnx"``): the
model's tokenizer and sentence-transformers configuration (pooling, normalisation, window)
beside ``model.onnx`` and ``onnx_config.json``, every file checksummed like any model.

The export is the transformer encoder only (``torch.onnx.export`` of the Hugging Face model
behind the sentence-transformers module, with eager attention, token vectors out), fused by
ONNX Runtime's BERT optimiser for BERT-family models (one Attention op per layer, embedding
layer norm, bias+GELU, skip layer norm); pooling and normalisation run in the emb service
from the model's own configuration (``emb.encoder.OnnxEncoder``).

Quantisation is dynamic int8 of weight MatMuls (activations quantised per batch at run time)
with these choices, measured on this CPU family (AVX2 without VNNI, see bench/RESULTS.md):

- weights per output channel, and with a 7-bit range (``reduce_range``): without VNNI the
  u8xs8 dot product sums pairs in saturating int16, and full-range weights overflow it —
  the main cause of a naive quantisation's drift;
- only the weight MatMuls of the chosen parts (``ops``): the feed-forward block (two thirds
  of the weight FLOPs) and by default the attention projections (the fused Attention op,
  QAttention); never the
  activation-by-activation MatMuls of attention (QK^T and the weighted sum), the embeddings
  or the pooler;
- the few outlier channels of the quantised MatMuls' inputs kept out of the int8 step
  (``split_outliers``: an fp32 side path for the GELU outliers, a rescale for the layer
  norms'), found on a few texts before quantising;
- optionally the last ``keep_last_layers`` layers left in fp32 (their errors go straight to
  the vector); with the outliers handled, none by default.

``bench/emb/quantize.py`` measured these choices on SciFact (see bench/RESULTS.md): naive
per-tensor int8 of every MatMul drifts to a mean cosine of 0.927; per-channel 7-bit weights of
the weight MatMuls to 0.9935, with 70 of 300 queries' nDCG@10 changed and dense nDCG@10
+0.010 off PyTorch's; with the outlier handling 0.9971, 41 changed, +0.001 — at 1.81x raw
PyTorch's speed instead of 2.00x (one thread, 256-token chunks).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from models import offline as _offline  # noqa: F401 - before any model library is imported
from models.formats import ONNX_CONFIG
from models.manifest import MANIFEST_FILE

log = structlog.get_logger("haven.models")

QuantizeOps = Literal["ffn", "ffn+attention"]
# Files of the source folder the export does not need: the PyTorch weights and other
# exports some repositories ship.
_WEIGHT_FILES = re.compile(r"^(.*\.safetensors|pytorch_model.*\.bin|.*\.h5|.*\.msgpack|.*\.ot)$")
_SKIPPED_FOLDERS = {"onnx", "openvino"}
ONNX_FILE = "model.onnx"
OPSET = 17


# The fixed texts an export is checked on before it is published: short questions, sentences
# and passages of several domains, and one past the model's window (truncation).
CHECK_TEXTS: tuple[str, ...] = (
    "What is the refund policy for annual subscriptions?",
    "How do I reset my password?",
    "Myelodysplastic syndromes are age-dependent stem cell malignancies.",
    "BC1 RNA is able to prime its own reverse transcription.",
    "The quick brown fox jumps over the lazy dog.",
    "Vitamin D deficiency is associated with increased risk of fractures.",
    "Invoices are due within thirty days of the delivery date.",
    "The cat sat on the mat.",
    "Quarterly revenue grew 12% while operating costs stayed flat.",
    "Ribosomes translate messenger RNA into chains of amino acids.",
    "The server returned 503 because the queue was full; retry after one second.",
    "Paris is the capital of France.",
    "Employees may carry over up to five days of unused leave into the next year.",
    "Gradient descent minimises a loss by stepping against its gradient.",
    "Water boils at 100 degrees Celsius at sea level.",
    "Patients receiving the higher dose showed no additional benefit at 12 months.",
    "Le contrat peut être résilié avec un préavis de trois mois.",
    "Tokyo, 2024: the committee approved the new budget (¥1.2tn) after a long debate.",
    "def add(a, b): return a + b",
    "Contact support@example.com for help with your account.",
    "Mitochondria are the powerhouse of the cell, producing ATP through oxidative"
    " phosphorylation. Damage to mitochondrial DNA accumulates with age and has been linked"
    " to neurodegenerative disease, although the causal direction remains debated.",
    "The tenant shall keep the premises in good repair and shall not make alterations"
    " without the landlord's written consent, which shall not be unreasonably withheld."
    " Any improvements become the landlord's property at the end of the lease.",
    "In a randomized controlled trial of 2,400 adults, daily supplementation did not reduce"
    " the incidence of cardiovascular events compared with placebo over five years of"
    " follow-up, and adverse events were similar in both groups.",
    "To deploy the service, build the image, push it to the registry, then update the"
    " stack file with the new tag and run the rolling update; health checks gate each"
    " replica before traffic moves to it.",
    "Diffusion tensor imaging of cerebral white matter in newborns. " * 40,
)


@dataclass(frozen=True)
class QuantizeOptions:
    ops: QuantizeOps = "ffn+attention"
    per_channel: bool = True
    reduce_range: bool = True
    keep_last_layers: int = 0
    # Feed-forward input channels whose calibration peak exceeds this multiple of the
    # median channel's peak run in fp32 beside the int8 MatMul (at most outlier_channels
    # per MatMul); None quantises them with the rest.
    outlier_ratio: float | None = 4.0
    outlier_channels: int = 8


@dataclass(frozen=True)
class Exported:
    folder: Path
    quantization: dict[str, Any] | None
    cosine_mean: float
    cosine_min: float


def export(
    source: Path,
    dest: Path,
    *,
    quantize: QuantizeOptions | None = None,
    check_texts: Sequence[str] = (),
) -> Exported:
    """Write the ONNX variant of the sentence-transformers folder ``source`` into ``dest``
    (created, must not exist); compare its vectors with PyTorch's on ``check_texts``."""
    from sentence_transformers import SentenceTransformer

    dest.mkdir(parents=True)
    _copy_configuration(source, dest)
    # Eager attention exports the attention as plain MatMul/Softmax, which ONNX Runtime's BERT
    # optimiser fuses into one Attention op (SDPA's exported graph is not recognised).
    model = SentenceTransformer(
        str(source),
        device="cpu",
        local_files_only=True,
        model_kwargs={"attn_implementation": "eager"},
    )
    with tempfile.TemporaryDirectory(prefix="haven-onnx-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        _export_encoder(model, fp32)
        _fuse(model, fp32)
        if quantize is None:
            shutil.copyfile(fp32, dest / ONNX_FILE)
            quantization = None
        else:
            split = (
                split_outliers(fp32, model, dest / "tokenizer.json", quantize)
                if quantize.outlier_ratio is not None
                else 0
            )
            quantization = {**_quantize(fp32, dest / ONNX_FILE, quantize), "outliers": split}
    config = {
        "file": ONNX_FILE,
        "pad_token_id": int(model.tokenizer.pad_token_id or 0),
        "opset": OPSET,
        # Copied into the manifest's parameters when published.
        "manifest": {"quantization": quantization["name"] if quantization else "fp32"},
        "quantization": quantization,
    }
    (dest / ONNX_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    mean, low = compare(model, dest, check_texts) if check_texts else (1.0, 1.0)
    return Exported(dest, quantization, mean, low)


def compare(reference: Any, folder: Path, texts: Sequence[str]) -> tuple[float, float]:
    """Mean and lowest cosine between the ONNX folder's vectors and ``reference``'s."""
    from emb.encoder import OnnxEncoder

    encoder = OnnxEncoder(folder, ref=str(folder), encode_batch_size=8, threads=1)
    ours = encoder.encode(list(texts)).vectors
    theirs = np.asarray(reference.encode(list(texts), batch_size=8), dtype=np.float32)
    cos = np.sum(ours * theirs, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    return float(cos.mean()), float(cos.min())


def _copy_configuration(source: Path, dest: Path) -> None:
    """Everything of the source folder but its PyTorch weights, other exports and the
    cache's manifest."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if not path.is_file() or any(p.startswith(".") for p in relative.parts):
            continue
        if relative.parts[0] in _SKIPPED_FOLDERS or _WEIGHT_FILES.match(path.name):
            continue
        if relative.as_posix() == MANIFEST_FILE:  # the cache's record of the source version
            continue
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    if not (dest / "tokenizer.json").is_file():
        raise ValueError(f"{source} has no tokenizer.json (a fast tokenizer is required)")


def _export_encoder(model: Any, path: Path) -> None:
    import torch

    transformer = model[0].auto_model.eval()
    names = ["input_ids", "attention_mask"]
    sample = model.tokenizer(["a short sentence", "another one"], return_tensors="pt", padding=True)
    if "token_type_ids" in sample:
        names.append("token_type_ids")

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            out = self.transformer(**dict(zip(names, inputs, strict=True)), return_dict=True)
            return out.last_hidden_state  # type: ignore[no-any-return]

    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    # The TorchScript exporter: torch's newer exporter (dynamo) needs onnxscript, which this
    # tree does not carry; the traced graph of an encoder has no control flow to lose. Its
    # warnings (deprecation, tracer, the attention mask's index expansion with non-negative
    # indices) are about graphs this one is not; the exported vectors are checked instead.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Encoder(),
            tuple(sample[name] for name in names),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={**axes, "last_hidden_state": {0: "batch", 1: "tokens"}},
            opset_version=OPSET,
            dynamo=False,
        )


def _fuse(model: Any, path: Path) -> None:
    """ONNX Runtime's offline BERT fusions (Attention, EmbedLayerNormalization, BiasGelu)
    for BERT-family encoders; other models stay as exported."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    config = model[0].auto_model.config
    if config.model_type != "bert":
        return
    options = FusionOptions("bert")
    # Residual Add + LayerNormalization stay two ops: see ``emb.encoder.UNFUSED_OPTIMIZERS``.
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = optimize_model(
            str(path),
            model_type="bert",
            num_heads=int(config.num_attention_heads),
            hidden_size=int(config.hidden_size),
            optimization_options=options,
            opt_level=0,
        )
    fused.save_model_to_file(str(path))
    log.info(
        "models.optimize.fused",
        **{k: v for k, v in fused.get_fused_operator_statistics().items() if v},
    )


def _quantize(fp32: Path, out: Path, options: QuantizeOptions) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32)).graph
    weights = {init.name for init in graph.initializer}
    layers = _layer_count(n.name for n in graph.node)
    keep = {str(i) for i in range(max(0, layers - options.keep_last_layers), layers)}
    chosen: list[str] = []
    excluded: list[str] = []
    # A fused Attention op (one per layer, in layer order) carries no layer in its name.
    attention = [n.name for n in graph.node if n.op_type == "Attention"]
    if options.ops == "ffn+attention":
        cut = max(0, len(attention) - options.keep_last_layers)
        chosen += attention[:cut]
        excluded += attention[cut:]
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        if not any(i in weights for i in node.input) or not _in_scope(node.name, options.ops):
            excluded.append(node.name)  # activation x activation, or outside the chosen part
            continue
        layer = re.search(r"layer\.(\d+)/", node.name)
        (excluded if layer and layer.group(1) in keep else chosen).append(node.name)
    if not chosen:
        raise ValueError("no MatMul matched the quantisation options; nothing to quantise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the quantiser's advice on pre-processing
        quantize_dynamic(
            str(fp32),
            str(out),
            op_types_to_quantize=["MatMul", "Attention"],
            nodes_to_quantize=chosen,
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            weight_type=QuantType.QInt8,
            # Shape inference does not type the outputs of fused (contrib) ops.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    name = (
        f"int8-{options.ops}"
        + ("-outliers" if options.outlier_ratio is not None else "")
        + (f"-fp32last{options.keep_last_layers}" if keep else "")
    )
    log.info("models.optimize.quantized", quantized=len(chosen), kept_fp32=len(excluded))
    return {"name": name, **asdict(options), "quantized_matmuls": len(chosen)}


def split_outliers(path: Path, model: Any, tokenizer_file: Path, options: QuantizeOptions) -> int:
    """Keep the few outlier channels of the quantised MatMuls' inputs from setting the
    int8 step of every other channel, rewriting the fused fp32 graph at ``path`` in place;
    returns how many channels were handled.

    A few channels of a transformer's activations are many times larger than the rest, the
    same channels for every text (on all-MiniLM-L6-v2: channel 99 of the layer norms' output,
    28 against a median of 2; one or two channels of each GELU output). Under dynamic
    per-tensor quantisation the largest channel sets the step for the whole tensor. A channel
    is an outlier when its peak over ``CHECK_TEXTS`` passes ``outlier_ratio`` times the median
    channel's peak (at most ``outlier_channels`` per input; only the indices and peaks are
    kept, and the same channels come out of 300 SciFact passages):

    - down projection (input: the GELU of the up projection, 1,536 wide): the outlier
      channels run in fp32 beside the int8 MatMul, as LLM.int8() does. Their columns of the
      up projection and their bias are zeroed, so the int8 path sees exact zeros there with no
      extra pass over the wide tensor; a narrow fp32 path (the block's input times those
      columns, the bias, GELU, times their rows of the down projection) is added to the down
      projection's output;
    - up projection and the fused attention's QKV projection (input: a layer norm's output,
      which is also the residual, so it cannot be changed at its source): the outlier
      channels are divided down to the floor by a Mul in front of the MatMul, and the
      weight's rows multiplied by as much (SmoothQuant's migration, on those channels only).

    On all-MiniLM-L6-v2 this lifts the mean cosine to PyTorch from 0.993 to 0.997 and
    nearly halves the SciFact queries whose nDCG@10 changes, for about a tenth of the int8
    model's speed (bench/emb/quantize.py).
    """
    import onnx
    from onnx import helper, numpy_helper
    from tokenizers import Tokenizer

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    weights = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    blocks = []  # (up MatMul, BiasGelu, down MatMul) per layer
    for node in graph.node:
        if node.op_type != "MatMul" or not re.search(r"layer\.\d+/output/dense/", node.name):
            continue
        gelu = producer.get(node.input[0])
        up = producer.get(gelu.input[0]) if gelu is not None else None
        if (
            gelu is not None
            and gelu.op_type == "BiasGelu"
            and up is not None
            and up.op_type == "MatMul"
            and {up.input[1], gelu.input[1], node.input[1]} <= weights.keys()
        ):
            blocks.append((up, gelu, node))
    attention = [n for n in graph.node if n.op_type == "Attention" and n.input[1] in weights]
    if not blocks and not attention:
        log.info("models.optimize.outliers", handled=0, reason="no fused block")
        return 0
    peaks = _channel_peaks(
        graph_model,
        [t for up, _, down in blocks for t in (up.input[0], down.input[0])]
        + [n.input[0] for n in attention],
        Tokenizer.from_file(str(tokenizer_file)),
        window=int(model.max_seq_length),
        pad_id=int(model.tokenizer.pad_token_id or 0),
    )
    ratio = float(options.outlier_ratio or 0.0)

    def outliers(tensor: str) -> tuple[Any, float]:
        peak = peaks[tensor]
        floor = ratio * float(np.median(peak))
        top = np.argsort(-peak)[: options.outlier_channels]
        return np.array(sorted(int(c) for c in top if peak[c] > floor), dtype=np.int64), floor

    def array(name: str) -> Any:
        return numpy_helper.to_array(weights[name]).copy()

    def store(name: str, value: Any) -> None:
        weights[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), name))

    def constant(name: str, value: Any) -> str:
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    before: dict[str, Any] = {}  # new node placed before the node named
    after: dict[str, list[Any]] = {}  # new nodes placed after the node named
    handled = 0

    def smooth(node: Any, weight: Any, name: str) -> Any:
        """Divide the outlier channels of ``node``'s input down to the floor (a Mul placed
        in front of it) and multiply ``weight``'s rows by as much; returns the weight."""
        nonlocal handled
        rows, floor = outliers(node.input[0])
        if not len(rows):
            return weight
        scale = np.ones(weight.shape[0], dtype=np.float32)
        scale[rows] = peaks[node.input[0]][rows] / floor
        weight[rows, :] *= scale[rows, None]
        inverse = constant(f"{name}.scale", (1.0 / scale).astype(np.float32))
        before[node.name] = helper.make_node(
            "Mul", [node.input[0], inverse], [f"{name}.scaled"], name=f"{name}.scale"
        )
        node.input[0] = f"{name}.scaled"
        handled += len(rows)
        return weight

    for n, (up, gelu, down) in enumerate(blocks):
        x, name = up.input[0], f"outliers.ffn.{n}"
        w_up, bias, w_down = array(up.input[1]), array(gelu.input[1]), array(down.input[1])
        cols, _ = outliers(down.input[0])
        if len(cols):
            fp32_path = [
                helper.make_node(
                    "MatMul",
                    [x, constant(f"{name}.up", w_up[:, cols])],
                    [f"{name}.pre"],
                    name=f"{name}.up",
                ),
                helper.make_node(
                    "BiasGelu",
                    [f"{name}.pre", constant(f"{name}.bias", bias[cols])],
                    [f"{name}.act"],
                    name=f"{name}.gelu",
                    domain="com.microsoft",
                ),
                helper.make_node(
                    "MatMul",
                    [f"{name}.act", constant(f"{name}.down", w_down[cols, :])],
                    [f"{name}.fp32"],
                    name=f"{name}.down",
                ),
            ]
            w_up[:, cols] = 0
            bias[cols] = 0
            w_down[cols, :] = 0
            output = down.output[0]
            down.output[0] = f"{name}.int8"
            fp32_path.append(
                helper.make_node(
                    "Add", [f"{name}.int8", f"{name}.fp32"], [output], name=f"{name}.add"
                )
            )
            after[down.name] = fp32_path
            handled += len(cols)
        # After the split: the split columns stay zero whatever the input's scale.
        store(up.input[1], smooth(up, w_up, f"{name}.input"))
        store(gelu.input[1], bias)
        store(down.input[1], w_down)
    for n, node in enumerate(attention):
        store(node.input[1], smooth(node, array(node.input[1]), f"outliers.attention.{n}"))
    nodes = []
    for node in graph.node:
        nodes += [*([before[node.name]] if node.name in before else []), node]
        nodes += after.get(node.name, [])
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(graph_model, str(path))
    log.info("models.optimize.outliers", handled=handled, blocks=len(blocks))
    return handled


def _channel_peaks(
    graph_model: Any,
    names: list[str],
    tokenizer: Any,
    *,
    window: int,
    pad_id: int,
) -> dict[str, Any]:
    """The largest magnitude of every channel of the tensors ``names`` over the real
    tokens of ``CHECK_TEXTS``."""
    import onnx
    import onnxruntime
    from onnx import helper

    from emb.encoder import token_feed

    probe = onnx.ModelProto()
    probe.CopyFrom(graph_model)
    for name in dict.fromkeys(names):
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(
        probe.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    inputs = {i.name for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    tokenizer.no_truncation()
    tokenizer.no_padding()
    peaks: dict[str, Any] = {}
    texts = list(CHECK_TEXTS)
    for start in range(0, len(texts), 8):
        encodings = tokenizer.encode_batch(texts[start : start + 8], add_special_tokens=True)
        batch = token_feed(encodings, window, pad_id, inputs)
        real = batch["attention_mask"].reshape(-1) > 0
        for name, value in zip(outputs, session.run(None, batch), strict=True):
            if name not in names:
                continue
            flat = np.abs(value).reshape(-1, value.shape[-1])[real].max(axis=0)
            peaks[name] = flat if name not in peaks else np.maximum(peaks[name], flat)
    return peaks


def _layer_count(names: Any) -> int:
    found = [int(m.group(1)) for n in names if (m := re.search(r"layer\.(\d+)/", n))]
    return max(found) + 1 if found else 0


def _in_scope(name: str, ops: QuantizeOps) -> bool:
    if "/layer." not in name:
        return False  # embeddings, pooler
    if "/intermediate/" in name or re.search(r"layer\.\d+/output/", name):
        return True  # the feed-forward block
    return ops == "ffn+attention" and "/attention/" in name
