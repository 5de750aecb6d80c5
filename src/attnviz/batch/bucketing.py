"""Length bucketing: tokenise a window of texts once, reject what cannot run, and cut the rest into
batches of similar length (capped by `batch_size` and an attention-memory budget) so padding
stays small."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from attnviz.batch.config import BatchConfig
from attnviz.batch.corpus import Item, Reject, excerpt
from attnviz.tokens import token_labels

if TYPE_CHECKING:
    from attnviz.attention import Encoded
    from attnviz.models.loading import LoadedModel


class Entry(NamedTuple):
    """A text ready for a batch: its token count and, unless it must be cut, its tokenisation."""

    item: Item
    n_tokens: int
    ids: list[int] | None = None  # None: tokenise again (truncation)
    offsets: list[tuple[int, int]] | None = None
    special: list[bool] | None = None
    tokens: list[str] | None = None  # readable labels, as extraction.tokenize makes them
    pieces: list[str] | None = None  # the tokenizer's raw pieces


def tokenize_window(
    loaded: LoadedModel, config: BatchConfig, items: list[Item], limit: int | None
) -> tuple[list[Entry], list[Reject]]:
    """Tokenise a window once: entries to run, and rejects (no tokens, or too long to run)."""
    tok = loaded.tokenizer
    fast = bool(getattr(tok, "is_fast", False))
    enc = tok(
        [it.text for it in items],
        add_special_tokens=config.special_tokens,
        return_special_tokens_mask=True,
        return_offsets_mapping=fast,
    )
    rejects: list[Reject] = []
    keep: list[Entry] = []
    for i, (it, row) in enumerate(zip(items, enc["input_ids"], strict=True)):
        n = len(row)
        if n == 0:
            rejects.append(
                Reject(it.text_id, it.line, "no_tokens", "the tokenizer made no tokens", excerpt(it.text))
            )
        elif limit is not None and n > limit:
            if config.truncate:
                keep.append(Entry(it, limit))
                continue
            # plain words, not a flag: the file is read by whoever ran it (command line, config, Python)
            detail = (
                f"{n} tokens but {loaded.name} takes at most {limit}; set truncate to cut such texts instead"
            )
            rejects.append(Reject(it.text_id, it.line, "too_long", detail, excerpt(it.text)))
        else:
            offsets = enc["offset_mapping"][i] if fast else [(0, 0)] * n
            tokens, pieces = token_labels(tok, row)
            special = [bool(x) for x in enc["special_tokens_mask"][i]]
            keep.append(Entry(it, n, row, [tuple(o) for o in offsets], special, tokens, pieces))
    return keep, rejects


def cut_batches(entries: list[Entry], config: BatchConfig, n_recorded: int) -> list[list[Entry]]:
    """Sort by length and cut: at most `batch_size` texts, and at most `attention_memory_mb` of
    recorded attention (`n_recorded` layer-heads of float32) per batch, in a fixed shuffled order."""
    entries = sorted(entries, key=lambda e: e.n_tokens)
    per_entry = n_recorded * 4  # bytes per attention entry
    budget = config.attention_memory_mb * 2**20
    batches: list[list[Entry]] = []
    current: list[Entry] = []
    for entry in entries:
        n = entry.n_tokens
        fits = (len(current) + 1) * n * n * per_entry <= budget
        if current and (len(current) >= config.batch_size or not fits):
            batches.append(current)
            current = []
        current.append(entry)
    if current:
        batches.append(current)
    # run them in a fixed shuffled order, so early progress (rate, ETA) is typical of the corpus
    random.Random(len(batches)).shuffle(batches)
    return batches


def encode(loaded: LoadedModel, config: BatchConfig, batch: Sequence[Entry]) -> Encoded:
    """Pad a batch's stored tokenisation (as extract.tokenize would), or tokenise it again."""
    from attnviz.attention import Encoded
    from attnviz.extraction import pad_rows, tokenize

    texts = [e.item.text for e in batch]
    if any(e.ids is None for e in batch):
        return tokenize(loaded, texts, config.special_tokens, config.truncate, config.max_length)
    lengths = [e.n_tokens for e in batch]
    ids, mask = pad_rows([e.ids or [] for e in batch], loaded.tokenizer.pad_token_id)
    offsets: list[Any] = [list(e.offsets or []) for e in batch]
    return Encoded(
        texts=texts,
        input_ids=ids,
        attention_mask=mask,
        lengths=lengths,
        offsets=offsets,
        special=[list(e.special or []) for e in batch],
        tokens=[list(e.tokens or []) for e in batch],
        truncated=[0] * len(batch),
        pieces=[list(e.pieces or []) for e in batch],
    )
