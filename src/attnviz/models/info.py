"""What `attnviz models` and `attnviz info` report: the bundled aliases, and a model's shape.

`describe` reads only a model's config (or a GGUF file's header) and its weights' headers, so
`attnviz info` answers in about a second instead of loading the weights.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnviz.errors import AttnvizError, ModelNotFoundError, param
from attnviz.models.loading import (
    BUNDLED,
    LoadedModel,
    ModelSource,
    _max_length,
    bundled_path,
    check_weights,
    quiet_transformers,
    resolve_model,
)
from attnviz.selection import resolve_indices


@dataclass(frozen=True)
class BundledStatus:
    """A bundled alias and whether its package is installed here."""

    alias: str
    description: str
    installed: bool
    path: str | None
    install: str


def list_bundled() -> list[BundledStatus]:
    """The bundled aliases, without loading anything."""
    out = []
    for alias, info in BUNDLED.items():
        path = bundled_path(alias)
        out.append(
            BundledStatus(alias, info.description, path is not None, str(path) if path else None, info.pip)
        )
    return out


@dataclass(frozen=True)
class ModelInfo:
    """What `attnviz info` prints."""

    name: str
    origin: str
    path: str
    architecture: str
    kind: str
    causal: bool
    layers: int
    heads: int
    kv_heads: int
    head_dim: int | None
    hidden_size: int | None
    max_length: int | None
    parameters: int
    device: str | None = None  # None: described from its files, not loaded
    dtype: str | None = None
    load_seconds: float | None = None


def model_info(loaded: LoadedModel) -> ModelInfo:
    """Architecture, sizes and where it was loaded from, read off the loaded model (nothing runs)."""
    config = loaded.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model", None)
    head_dim = getattr(text, "head_dim", None) or (hidden // loaded.num_heads if hidden else None)
    return ModelInfo(
        name=loaded.name,
        origin=loaded.source.origin,
        path=loaded.source.path,
        architecture=type(loaded.model).__name__,
        kind=loaded.kind,
        causal=loaded.causal,
        layers=loaded.num_layers,
        heads=loaded.num_heads,
        kv_heads=loaded.num_kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        max_length=loaded.max_length,
        parameters=loaded.num_parameters,
        device=loaded.device,
        dtype=loaded.dtype,
        load_seconds=round(loaded.load_seconds, 3),
    )


def describe(model: str | None = None, trust_remote_code: bool = False) -> ModelInfo:
    """A model's shape from its config (or GGUF header) and weight headers, without loading weights."""
    source = resolve_model(model)
    if source.origin == "gguf":
        return _describe_gguf(source)
    folder = _config_folder(source)
    config = _plain_config(folder) or _auto_config(folder, source, trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "d_model", None)
    kind = _kind(config)
    return ModelInfo(
        name=source.name,
        origin=source.origin,
        path=source.path,
        architecture=_architecture(config),
        kind=kind,
        causal=kind == "decoder",
        layers=int(getattr(text, "num_hidden_layers", 0) or 0),
        heads=heads,
        kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
        head_dim=getattr(text, "head_dim", None) or (hidden // heads if hidden and heads else None),
        hidden_size=hidden,
        max_length=_config_max_length(text, folder),
        parameters=_safetensors_parameters(folder),
    )


def check_selection(
    model: str | None,
    layers: Sequence[int] | None,
    heads: Sequence[int] | None,
    trust_remote_code: bool = False,
) -> None:
    """InputError for a layer or head out of range, read from the model's config as `describe`
    reads it: a typo costs a second, not a model load. A model whose shape cannot be read without
    loading (not cached, a config transformers must build) or whose layers are counted otherwise
    (encoder-decoder) is left to the check after loading."""

    if layers is None and heads is None:
        return
    try:
        found = describe(model, trust_remote_code)
    except (AttnvizError, OSError, ValueError):  # said again, in its own words, by the load
        return
    if found.kind == "encoder-decoder" or found.layers < 1 or found.heads < 1:
        return
    resolve_indices(layers, found.layers, "layer", found.name)
    resolve_indices(heads, found.heads, "head", found.name)


# Encoder families whose config.json names its sizes plainly, so `info` reads them without
# importing transformers (and torch): model type -> the class AutoModel builds. A test checks
# each entry against transformers' own tables.
PLAIN_ENCODERS = {
    "bert": "BertModel",
    "roberta": "RobertaModel",
    "xlm-roberta": "XLMRobertaModel",
    "electra": "ElectraModel",
    "mpnet": "MPNetModel",
    "camembert": "CamembertModel",
}
_PLAIN_KEYS = ("num_hidden_layers", "num_attention_heads", "hidden_size")


def _plain_config(folder: Path) -> Any | None:
    """config.json as attributes, for a PLAIN_ENCODERS model without code of its own; else None."""
    from types import SimpleNamespace

    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # transformers says what is wrong
    if not isinstance(data, dict) or data.get("model_type") not in PLAIN_ENCODERS or "auto_map" in data:
        return None
    if data.get("is_decoder") or data.get("is_encoder_decoder"):
        return None
    if not all(isinstance(data.get(k), int) and data[k] > 0 for k in _PLAIN_KEYS):
        return None
    return SimpleNamespace(**data)


def _auto_config(folder: Path, source: ModelSource, trust_remote_code: bool) -> Any:
    """transformers' config object, which knows every model type's names for its sizes."""
    from transformers import AutoConfig

    quiet_transformers()
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelNotFoundError(f"could not read the config of '{source.spec}': {first}") from None


def _config_folder(source: ModelSource) -> Path:
    """The folder holding config.json: the model folder, or the hub id's snapshot in the local cache."""
    if source.origin != "hub":
        return Path(source.path)
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.path, "config.json")
    if not isinstance(found, str):
        raise ModelNotFoundError(
            f"model '{source.spec}' is not in the Hugging Face cache; "
            f"try {param('model', 'minilm')} or a local model folder"
        )
    folder = Path(found).parent
    check_weights(folder)
    return folder


def _kind(config: Any) -> str:
    """Encoder, decoder or encoder-decoder, as the config declares it (no forward pass)."""
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    names = getattr(config, "architectures", None) or []
    if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names):
        return "decoder"
    if getattr(config, "model_type", "") in PLAIN_ENCODERS and not getattr(config, "is_decoder", False):
        return "encoder"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "")
    causal_only = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and (
        model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )
    return "decoder" if causal_only or getattr(config, "is_decoder", False) else "encoder"


def _architecture(config: Any) -> str:
    """The class `load_model` builds (AutoModel's choice for this model type)."""
    if getattr(config, "model_type", "") in PLAIN_ENCODERS:
        return PLAIN_ENCODERS[config.model_type]
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    name = MODEL_MAPPING_NAMES.get(getattr(config, "model_type", ""))
    if isinstance(name, str):
        return name
    return (getattr(config, "architectures", None) or [type(config).__name__])[0]


def _config_max_length(text: Any, folder: Path) -> int | None:
    """As `models._max_length`, with the tokenizer's limit read from tokenizer_config.json."""

    tok_max = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        tok_max = json.loads((folder / "tokenizer_config.json").read_text()).get("model_max_length")

    class _Tokenizer:
        model_max_length = tok_max

    return _max_length(text, _Tokenizer())


_INDEX_DTYPES = ("BOOL", "I8", "I16", "I32", "I64", "U16", "U32", "U64")  # buffers (position_ids)


def _safetensors_parameters(folder: Path) -> int:
    """Number of values in the checkpoint's safetensors files, read from their headers only.

    This is what AutoModel loads for a base checkpoint; a checkpoint saved with an LM head also
    counts the head's weights.
    """
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with path.open("rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            for key, entry in header.items():
                if key != "__metadata__" and entry["dtype"] not in _INDEX_DTYPES:
                    count = 1
                    for dim in entry["shape"]:
                        count *= int(dim)
                    total += count
        except (OSError, ValueError, KeyError, TypeError, struct.error, MemoryError):
            raise ModelNotFoundError(
                f"{path} is not a readable safetensors file (damaged or cut short?); "
                "download or save it again"
            ) from None
    return total


_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class _Header:
    """A GGUF file's header read field by field: scalars and strings kept, arrays skipped.

    The gguf package's reader also decodes every array (a tokenizer's whole vocabulary), which
    takes seconds; `info` needs a dozen numbers and the tensor shapes.
    """

    def __init__(self, f: Any) -> None:
        self.f = f

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise ValueError("the file ends inside its header")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        size = self.unpack("<Q")
        if size > 1 << 24:
            raise ValueError(f"a string of {size} bytes")
        return self.f.read(size).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind != _ARRAY:
            raise ValueError(f"unknown value type {kind}")
        item, count = self.unpack("<I"), self.unpack("<Q")
        if item in _SCALARS:
            self.f.seek(struct.calcsize(_SCALARS[item]) * count, 1)
        else:
            for _ in range(count):
                self.value(item)
        return None

    def read(self) -> tuple[dict[str, Any], list[int]]:
        """(metadata key -> value, arrays as None; number of values of each tensor)."""
        if self.f.read(4) != b"GGUF":
            raise ValueError("it does not start with GGUF")
        version = self.unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        n_tensors, n_fields = self.unpack("<Q"), self.unpack("<Q")
        fields = {}
        for _ in range(n_fields):
            key = self.string()
            fields[key] = self.value(self.unpack("<I"))
        sizes = []
        for _ in range(n_tensors):
            self.string()
            count = 1
            for _ in range(self.unpack("<I")):
                count *= self.unpack("<Q")
            self.unpack("<I")  # quantisation type
            self.unpack("<Q")  # data offset
            sizes.append(count)
        return fields, sizes


def _describe_gguf(source: ModelSource) -> ModelInfo:
    """Shape from a GGUF file's header metadata and tensor table (nothing is de-quantised)."""
    try:
        with open(source.path, "rb") as f:
            fields, sizes = _Header(f).read()
    except (OSError, ValueError, struct.error) as exc:
        raise ModelNotFoundError(f"{source.path} is not a readable GGUF file: {exc}") from None

    arch = str(fields.get("general.architecture") or "unknown")
    heads = int(fields.get(f"{arch}.attention.head_count") or 0)
    hidden = fields.get(f"{arch}.embedding_length")
    context = fields.get(f"{arch}.context_length")
    kind = "encoder-decoder" if arch == "t5" else "decoder"
    return ModelInfo(
        name=source.name,
        origin=source.origin,
        path=source.path,
        architecture=f"{arch} (GGUF)",
        kind=kind,
        causal=kind == "decoder",
        layers=int(fields.get(f"{arch}.block_count") or 0),
        heads=heads,
        kv_heads=int(fields.get(f"{arch}.attention.head_count_kv") or heads),
        head_dim=int(hidden) // heads if hidden and heads else None,
        hidden_size=int(hidden) if hidden else None,
        max_length=int(context) if context else None,
        parameters=sum(sizes),
    )
