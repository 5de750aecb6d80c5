"""Batch configuration: a TOML file (yours, or one shipped: the project's `configs/`), merged with options.

Precedence, lowest first: the defaults below, the TOML file, then the options actually given on the
command line (an option left out never overrides the file). Light on purpose: no numpy, no torch,
so `attnviz --help` stays fast.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

from attnviz.errors import InputError, param
from attnviz.selection import parse_indices

# Per-head statistics `attnviz batch` can record; probes are added by listing probes.
STATISTICS: dict[str, str] = {
    "entropy": "mean row entropy in bits (over the text's real query rows)",
    "max_weight": "largest single weight, and `mean_row_max`: the mean over rows of each row's largest",
    "special": "mean over rows of the weight on special tokens ([CLS], [SEP], BOS...)",
    "patterns": "the classic pattern scores of `attnviz heads` (self, previous, next, first, "
    "last_sep, punctuation, broad)",
    "norm": "special_attention and special_norm: the share of each row on special tokens, by weight and "
    "by value-norm weight (Kobayashi et al. 2020); off by default",
}
DEFAULT_STATISTICS: tuple[str, ...] = tuple(s for s in STATISTICS if s != "norm")
FORMATS = ("auto", "txt", "jsonl", "csv", "parquet")
_NAME_RE = re.compile(r"[^0-9a-z_]+")
_ADDRESS = re.compile(r"auto|(ray://)?[A-Za-z0-9_.\-]+:\d{1,5}|(ray://)?\[[0-9A-Fa-f:.]+\]:\d{1,5}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Torch threads per process (and Ray's CPUs per worker): more cannot help, and 100,000 made the
# allocator fail to start its threads (a segmentation fault), not a message.
MAX_THREADS = 1024

# TOML layout: section -> {key in the file: BatchConfig field}
SECTIONS: dict[str, dict[str, str]] = {
    "model": {
        "name": "model",
        "device": "device",
        "dtype": "dtype",
        "trust_remote_code": "trust_remote_code",
        "threads": "threads",
    },
    "input": {
        "format": "format",
        "field": "field",
        "column": "column",
        "truncate": "truncate",
        "max_length": "max_length",
        "special_tokens": "special_tokens",
    },
    "run": {
        "batch_size": "batch_size",
        "layers": "layers",
        "heads": "heads",
        "attention_memory_mb": "attention_memory_mb",
    },
    "statistics": {"keep": "statistics"},
    "output": {
        "save_attention": "save_attention",
        "plots": "plots",
        "texts": "keep_texts",
        "texts_per_part": "texts_per_part",
        "commit_seconds": "commit_seconds",
    },
    "engine": {"name": "engine", "workers": "workers", "address": "address"},
}
ENGINES = ("local", "ray")
# Fields whose change makes results incomparable: a run can only be resumed when these match.
IDENTITY = (
    "model",
    "dtype",
    "trust_remote_code",
    "format",
    "field",
    "column",
    "truncate",
    "max_length",
    "special_tokens",
    "layers",
    "heads",
    "statistics",
    "probes",
    "save_attention",
    "keep_texts",
)


@dataclass(frozen=True)
class Probe:
    """A token pair to follow through a corpus: word-level A->B and B->A weights per head.

    `a` and `b` are alternatives: the first of them (in text order) found in a text is used, so a
    probe like he|she|it -> Emily works across sentences. A text holding neither gets NaN.
    """

    name: str
    a: tuple[str, ...]
    b: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, str]:
        """The two long-table columns: A->B and B->A."""
        return f"probe_{self.name}_ab", f"probe_{self.name}_ba"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "a": list(self.a), "b": list(self.b)}


@dataclass(frozen=True)
class BatchConfig:
    """Everything one `attnviz batch` run needs besides the input and the output folder."""

    model: str = "minilm"
    device: str = "auto"
    dtype: str = "float32"
    trust_remote_code: bool = False
    threads: int | None = None  # torch CPU threads; None: the CPUs free now (batch.records.free_cpus)
    format: str = "auto"  # txt, jsonl, csv, parquet; auto: from the file name
    field: str = "text"  # .jsonl key
    column: str = "text"  # .csv / .parquet column
    truncate: bool = False  # cut over-long texts instead of rejecting them
    max_length: int | None = None  # token limit below the model's own
    special_tokens: bool = True
    batch_size: int = 32
    layers: tuple[int, ...] | None = None  # None: all
    heads: tuple[int, ...] | None = None
    attention_memory_mb: int = 1024  # cap on one batch's recorded attention; long texts batch smaller
    statistics: tuple[str, ...] = DEFAULT_STATISTICS
    probes: tuple[Probe, ...] = ()
    save_attention: bool = False
    plots: bool = True
    keep_texts: bool = True  # write the texts table (_texts/) beside the statistics
    texts_per_part: int = 1024  # texts per committed Parquet part (and per length-bucketing window)
    commit_seconds: float = 60.0  # commit sooner when a part takes longer than this
    engine: str = "local"  # local (this process) or ray (actors on a Ray cluster)
    workers: int | None = None  # ray: actors, each loading the model once; None: cluster CPUs / threads
    address: str | None = None  # ray: auto, ray://HOST:PORT or HOST:PORT; None: start a local Ray
    source: str | None = dc_field(default=None, compare=False)  # the TOML file, if any

    def __post_init__(self) -> None:
        _check(self)

    def identity(self) -> dict[str, Any]:
        """The settings that decide what the results mean (compared on --resume)."""
        data = self.as_dict()
        return {k: data[k] for k in IDENTITY}

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = list(self.layers) if self.layers is not None else None
        data["heads"] = list(self.heads) if self.heads is not None else None
        data["statistics"] = list(self.statistics)
        data["probes"] = [p.as_dict() for p in self.probes]
        return data

    def to_toml(self) -> str:
        """The configuration as a TOML file that `load_config` reads back."""
        data = self.as_dict()
        lines: list[str] = []
        for section, keys in SECTIONS.items():
            lines.append(f"[{section}]")
            for key, name in keys.items():
                value = data[name]
                if name == "trust_remote_code":
                    lines.append(  # true for `--show-config` and for `to_toml()` alike
                        "# trust_remote_code: a config file cannot enable it; "
                        "only the command line or a Python caller can"
                    )
                elif value is None:
                    lines.append(f"# {key} = (not set)")
                else:
                    lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        for p in self.probes:
            lines += ["[[probes]]", f"name = {_toml_value(p.name)}"]
            lines += [f"a = {_toml_value(_one_or_list(p.a))}", f"b = {_toml_value(_one_or_list(p.b))}", ""]
        return "\n".join(lines)


def _one_or_list(values: tuple[str, ...]) -> str | list[str]:
    return values[0] if len(values) == 1 else list(values)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def _check(cfg: BatchConfig) -> None:
    where = f" (in {cfg.source})" if cfg.source else ""
    unknown = [s for s in cfg.statistics if s not in STATISTICS]
    if unknown:
        raise InputError(f"unknown statistic '{unknown[0]}'{where}; choose from {', '.join(STATISTICS)}")
    if not cfg.statistics and not cfg.probes:
        raise InputError(f"nothing to record{where}: keep at least one statistic or add a probe")
    if not cfg.model.strip():
        raise InputError(f"the model name is empty{where}: give an alias, a hub id, a folder or a .gguf file")
    if cfg.format not in FORMATS:
        raise InputError(f"unknown input format '{cfg.format}'{where}; use {', '.join(FORMATS)}")
    for name in ("batch_size", "texts_per_part", "attention_memory_mb"):
        if getattr(cfg, name) < 1:
            raise InputError(f"{name} must be at least 1{where}")
    if cfg.max_length is not None and cfg.max_length < 2:
        raise InputError(f"max_length must be at least 2{where}")
    if cfg.threads is not None and not 1 <= cfg.threads <= MAX_THREADS:
        raise InputError(f"threads must be from 1 to {MAX_THREADS}, got {cfg.threads}{where}")
    for name in ("field", "column"):
        if not getattr(cfg, name).strip():
            raise InputError(f"the {name} name is empty{where}: name the {_HOLDS[name]} holding the text")
    if not cfg.commit_seconds > 0:  # NaN too
        raise InputError(f"commit_seconds must be positive{where}")
    _check_engine(cfg, where)
    names = [p.name for p in cfg.probes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"probe name '{dupes[0]}' is used twice{where}; give each probe its own name")


_HOLDS = {"field": "JSON key", "column": "CSV / Parquet column"}


def _check_engine(cfg: BatchConfig, where: str) -> None:
    if cfg.engine not in ENGINES:
        raise InputError(f"unknown engine '{cfg.engine}'{where}; use {' or '.join(ENGINES)}")
    if cfg.workers is not None and cfg.workers < 1:
        raise InputError(f"workers must be at least 1{where}")
    if cfg.engine != "ray":
        for name in ("workers", "address"):
            if getattr(cfg, name) is not None:
                raise InputError(
                    f"{name} is only for the Ray engine{where}; add engine ray ({param('engine', 'ray')})"
                )
    if cfg.address is not None and not _ADDRESS.fullmatch(cfg.address):
        raise InputError(
            f"bad Ray address '{cfg.address}'{where}: use auto, ray://HOST:PORT or HOST:PORT "
            "(leave it out to start a local Ray instance)"
        )


# -- parsing ------------------------------------------------------------------------------------
def probe_name(a: str, b: str) -> str:
    """A column-safe name from a probe's first words: ('She', 'Emily') -> 'she_emily'."""
    name = _NAME_RE.sub("_", f"{a}_{b}".casefold().replace("@", "at")).strip("_")
    return name or "probe"


def make_probe(a: Any, b: Any, name: str | None = None, where: str = "") -> Probe:
    def words(v: Any, side: str) -> tuple[str, ...]:
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list | tuple) or not items:
            raise InputError(f"probe {side} must be a word or a list of words{where}")
        out = tuple(str(x).strip() for x in items if isinstance(x, str) and x.strip())
        if len(out) != len(items):
            raise InputError(f"probe {side} has an empty or non-text word{where}")
        return out

    wa, wb = words(a, "a"), words(b, "b")
    if name is None:
        name = probe_name(wa[0], wb[0])
    elif not _IDENTIFIER.fullmatch(name):
        raise InputError(
            f"bad probe name '{name}'{where}: a name holds only letters, digits and _, "
            "and does not start with a digit"
        )
    return Probe(name=name, a=wa, b=wb)


def parse_probe(spec: str) -> Probe:
    """Command-line form `A:B`, with alternatives `he|she:Emily` and an optional `name=A:B`."""
    name = None
    text = spec.strip()
    head, sep, rest = text.partition("=")
    if sep and ":" in rest and ":" not in head:  # name=A:B; a bad name is an error, not a word
        name, text = head.strip(), rest
    # split on the last ':' that separates two non-empty sides
    if text.count(":") != 1:
        raise InputError(f"bad probe '{spec}': write it as A:B (e.g. she:Emily or he|she:Emily)")
    a, b = text.split(":")
    if not a.strip() or not b.strip():
        raise InputError(f"bad probe '{spec}': both words are needed, as A:B")
    return make_probe(a.split("|"), b.split("|"), name, f" (in {param('probe', spec)})")


def config_folder() -> Path:
    """Where the shipped configs are: `attnviz/configs/` in an installed wheel, else the project's
    own `configs/` beside `src/` (a checkout, an editable install): one copy, never two."""
    import attnviz

    package = Path(attnviz.__file__).parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent.parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """The configs that ship with attnviz (name -> file), found wherever attnviz is installed."""
    folder = config_folder()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.toml")) if p.is_file()}


def find_config(spec: str | Path) -> Path:
    """A config path as given; a bare NAME is ./configs/NAME.toml, else the shipped config NAME."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    shipped = shipped_configs()
    if path.suffix == "" and len(path.parts) == 1:
        candidate = Path("configs") / f"{path.name}.toml"
        if candidate.is_file():
            return candidate
        if path.name in shipped:
            return shipped[path.name]
        raise InputError(
            f"no such config: {spec} (a bare name is looked up as configs/{spec}.toml here, then "
            f"among the shipped configs: {', '.join(sorted(shipped))})"
        )
    raise InputError(f"no such config file: {spec}")


def load_config(spec: str | Path) -> dict[str, Any]:
    """Read a TOML config into BatchConfig field values, checking every section and key."""
    path = find_config(spec)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    where = f" (in {path})"
    out: dict[str, Any] = {"source": str(path)}
    for section, body in data.items():
        if section == "probes":
            if not isinstance(body, list) or not all(isinstance(p, dict) for p in body):
                raise InputError(f"probes must be [[probes]] tables with a and b{where}")
            probes = []
            for p in body:
                extra = set(p) - {"name", "a", "b"}
                if extra or "a" not in p or "b" not in p:
                    raise InputError(f"each [[probes]] needs a and b (and may have name){where}")
                probes.append(make_probe(p["a"], p["b"], p.get("name"), where))
            out["probes"] = tuple(probes)
            continue
        keys = SECTIONS.get(section)
        if keys is None or not isinstance(body, dict):
            allowed = ", ".join([*SECTIONS, "probes"])
            raise InputError(f"unknown section [{section}]{where}; sections are {allowed}")
        for key, value in body.items():
            if key not in keys:
                raise InputError(
                    f"unknown key '{key}' in [{section}]{where}; keys there are {', '.join(keys)}"
                )
            if key == "trust_remote_code" and value is not False:
                raise InputError(
                    f"trust_remote_code cannot be set in a config file{where}; remove it and pass "
                    f"{param('trust_remote_code', True)} instead to let a model's own code run"
                )
            if keys[key] == "statistics" and not isinstance(value, list):  # the file's form is a list
                example = 'keep = ["entropy"]'
                raise InputError(f"keep in [statistics] must be a list of names, e.g. {example}{where}")
            out[keys[key]] = value
    return _coerce(out, where)


_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "device": (str,),
    "dtype": (str,),
    "trust_remote_code": (bool,),
    "threads": (int,),
    "format": (str,),
    "field": (str,),
    "column": (str,),
    "truncate": (bool,),
    "max_length": (int,),
    "special_tokens": (bool,),
    "batch_size": (int,),
    "attention_memory_mb": (int,),
    "save_attention": (bool,),
    "plots": (bool,),
    "keep_texts": (bool,),
    "texts_per_part": (int,),
    "commit_seconds": (int, float),
    "engine": (str,),
    "workers": (int,),
    "address": (str,),
}


_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def _coerce(values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Check types and normalise lists; None values are dropped (not given)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name in ("layers", "heads"):
            out[name] = parse_indices(value, name, where[5:-1] if where else None)
        elif name == "statistics":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(s, str) for s in items):
                raise InputError(f"statistics must be a list of names{where}")
            flat = [s.strip() for item in items for s in item.split(",") if s.strip()]
            if flat == ["all"]:
                flat = list(STATISTICS)
            if flat == ["none"]:
                flat = []
            out[name] = tuple(dict.fromkeys(flat))
        elif name in ("probes", "source"):
            out[name] = value
        elif name in _TYPES:
            types = _TYPES[name]
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                kind = " or ".join(_KINDS[t] for t in types)
                raise InputError(f"{name} must be {kind}, got {value!r}{where}")
            out[name] = value
        else:
            raise InputError(f"unknown setting '{name}'")
    return out


def make_config(config: str | Path | None = None, **options: Any) -> BatchConfig:
    """Defaults, then the TOML file (if any), then every option that is not None."""
    values: dict[str, Any] = load_config(config) if config is not None else {}
    values.update(_coerce(options))
    return BatchConfig(**values)
