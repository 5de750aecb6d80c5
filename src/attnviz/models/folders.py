"""What a model folder must hold before transformers builds a model from it: sizes a model can
have in config.json, and a tokenizer with a vocabulary of its own. Each problem is one
ModelNotFoundError naming the file, never a ZeroDivisionError or a shape error from deep inside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnviz.errors import ModelNotFoundError

if TYPE_CHECKING:
    from attnviz.models.loading import ModelSource

# sizes a config.json may give; each must be a whole number of at least 1 (positions: 2, room for
# one token and one more), or the model class divides by zero or builds tables no weight fits
_SIZES = {
    "num_attention_heads": 1, "num_hidden_layers": 1, "hidden_size": 1,
    "n_head": 1, "n_layer": 1, "n_embd": 1, "d_model": 1, "num_heads": 1, "num_layers": 1,
    "encoder_attention_heads": 1, "decoder_attention_heads": 1, "num_key_value_heads": 1,
    "encoder_layers": 1, "decoder_layers": 1, "head_dim": 1,
    "max_position_embeddings": 2, "n_positions": 2,
}  # fmt: skip


def check_config(folder: Path) -> None:
    """Refuse a config.json whose sizes no model can have (0 heads, 1 position, -3 layers, 2.5).

    Read before transformers builds the model, where they end in a ZeroDivisionError or a shape
    error. A config transformers cannot read at all is left to its own message.
    """
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    configs = [data] + [v for v in data.values() if isinstance(v, dict)] if isinstance(data, dict) else []
    for config in configs:  # a multimodal config nests its text model's
        for key, least in _SIZES.items():
            value = config.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ModelNotFoundError(
                    f"{folder / 'config.json'} gives {key} {value!r}, which no model can have "
                    f"(a whole number, at least {least}); fix the config or save the model again"
                )


def check_tokenizer(tokenizer: Any, source: ModelSource) -> None:
    """Refuse a tokenizer with no vocabulary of its own (a folder without its tokenizer files):
    transformers builds one anyway, and every word becomes [UNK]."""
    try:
        vocab = tokenizer.get_vocab()
        special = set(getattr(tokenizer, "all_special_tokens", ()))
    except Exception:  # a tokenizer of its own code, without get_vocab: trusted as it is
        return
    if vocab and not set(vocab) - special:
        raise ModelNotFoundError(
            f"'{source.spec}' has no tokenizer files (tokenizer.json, vocab.txt, ...): every word would "
            "read as unknown; copy the tokenizer's files into the folder"
        )


PICKLED = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_weights(folder: Path) -> None:
    """Refuse a folder whose weights exist only as pickles: unpickling can run arbitrary code."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for pattern in PICKLED for p in folder.glob(pattern))
    if pickled:
        raise ModelNotFoundError(
            f"{folder / pickled[0]} is a pickled PyTorch file, which attnviz never loads (unpickling can "
            "run code); convert the weights to model.safetensors and try again"
        )


def unreadable_safetensors(folder: Path) -> Path | None:
    """The first .safetensors file in `folder` whose header cannot be read, if any."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy") as f:
                f.keys()
        except Exception:  # safetensors raises its own error type for a bad header
            return path
    return None
