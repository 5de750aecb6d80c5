"""One pipeline every command uses for its view options: weighting, hidden special tokens, pooling.

`ViewOptions.check()` validates the options before a model loads; `transform` applies them in the one order
that makes sense (norm weighting needs the special tokens' value vectors, pooling comes last), and
each step adds a note, so figures and saved files say how the attention was made.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from attnviz.errors import InputError, param
from attnviz.models.capture import check_store
from attnviz.models.loading import LoadedModel, load_model

if TYPE_CHECKING:
    from attnviz.attention import Attention
    from attnviz.models.loading import LoadedModel

AGGREGATES = ("mean", "max")
OVERS = ("heads", "layers", "both")


@dataclass(frozen=True)
class ViewOptions:
    """What a command was asked to show, checked once, applied by `transform`."""

    weighting: str = "attention"  # "attention" or "norm" (Kobayashi et al. 2020)
    hide_special: bool = False  # drop [CLS]/[SEP]/BOS/EOS; rows renormalised to sum to 1
    aggregate: str | None = None  # None, "mean" or "max"
    over: str = "heads"  # what `aggregate` pools: heads, layers or both

    @property
    def changes(self) -> bool:
        """Whether `transform` changes anything (figures then say how in their titles)."""
        return self != ViewOptions()

    @property
    def qkv(self) -> bool:
        """Whether extraction must keep the value vectors (norm weighting needs them)."""
        return self.weighting == "norm"

    def needs_qkv(self, loaded: LoadedModel) -> bool:
        """Whether extracting from `loaded` for this view must keep the value vectors: norm weighting
        needs them, unless the model's attention is its own code (traced at the projection)."""
        from attnviz.analyses.norms import needs_qkv

        return self.qkv and needs_qkv(loaded)

    def check(self, words: bool = False) -> ViewOptions:
        """InputError (one line, naming the option) on the first bad value; returns self."""
        if self.weighting not in ("attention", "norm"):
            raise InputError(f"unknown {param('weighting')} '{self.weighting}': use attention or norm")
        if self.aggregate is not None and self.aggregate not in AGGREGATES:
            raise InputError(f"unknown {param('aggregate')} '{self.aggregate}': use mean or max")
        if self.over not in OVERS:
            raise InputError(f"unknown {param('over')} '{self.over}': use heads, layers or both")
        if words and self.weighting == "norm":
            raise InputError(f"{param('weighting', 'norm')} works on tokens: drop {param('words', True)}")
        return self


@dataclass(frozen=True)
class ExtractOptions:
    """What to extract from a text and how to show it: one object, checked once by `check()`
    before a model loads, taken whole by `extract_shown` (the CLI and the server only build it)."""

    layers: tuple[int, ...] | None = None  # None: all
    heads: tuple[int, ...] | None = None
    words: bool = False  # word level (pieces pooled into words)
    special_tokens: bool = True  # add the tokenizer's [CLS]/[SEP]/BOS
    truncate: bool = False
    store: str = "float32"  # or "float16"
    view: ViewOptions = ViewOptions()
    stream: str = "self"  # an encoder-decoder's: self (the encoder), decoder or cross

    def check(self) -> ExtractOptions:
        """InputError (one line, naming the option) on the first bad value; returns self."""
        from attnviz.extraction import check_stream

        check_store(self.store)
        self.view.check(words=self.words)
        one_layer = self.layers[0] if self.layers is not None and len(self.layers) == 1 else None
        view = self.view
        check_stream(self.stream, one_layer, self.heads, self.words, view.changes, view.weighting == "norm")
        return self


def extract_shown(text: str, model: str | LoadedModel | None, options: ExtractOptions) -> Attention:
    """`extract` then `transform`: the attention a command shows, as `options` ask. The value
    vectors are kept only when norm weighting needs them; `model` may be a LoadedModel (needed for
    norm weighting) or anything `load_model` takes. `options.stream` picks an encoder-decoder's
    square stream before the transform; "cross" returns the extraction as it is (untransformed, as
    `check` demands), for `plots.cross_figure`."""
    from dataclasses import replace

    from attnviz.extraction import extract, square_stream

    options.check()
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    att = extract(text, loaded, words=options.words, **_selection(options, loaded))
    if options.stream == "cross":
        return att
    square = square_stream(att, options.stream)
    if square.truncated != att.truncated:  # the decoder stream reads the encoder's text, cut or not
        square = replace(square, truncated=att.truncated)
    return transform(square, options.view, loaded)


def _selection(options: ExtractOptions, loaded: LoadedModel) -> dict[str, Any]:
    """The extraction keywords both `extract_shown` functions pass: what to record and how."""
    return {
        "layers": options.layers,
        "heads": options.heads,
        "special_tokens": options.special_tokens,
        "truncate": options.truncate,
        "store": options.store,
        "qkv": options.view.needs_qkv(loaded),
    }


def extract_shown_stream(
    texts: Iterable[str], loaded: LoadedModel, options: ExtractOptions, chunk: int = 32, plain: bool = False
) -> Iterator[Any]:
    """`extract_shown` for many texts, `chunk` at a time, so a long corpus never holds every tensor at
    once. With `plain`, pairs (shown, the same attention unweighted): one to rank, one to read roles
    from the weights. Token level and self-attention only (`words` and `stream` are refused)."""
    from dataclasses import replace

    from attnviz.extraction import extract_stream

    options.check()
    if options.words or options.stream != "self":
        raise InputError(f"many texts are read as tokens of the self-attention: drop {param('words', True)}"
                         f" and {param('stream')}")  # fmt: skip
    atts = extract_stream(texts, loaded, batch_size=chunk, **_selection(options, loaded))
    unweighted = replace(options.view, weighting="attention")
    for att in atts:
        shown = transform(att, options.view, loaded)
        yield (shown, transform(att, unweighted)) if plain else shown


def transform(att: Attention, options: ViewOptions, loaded: LoadedModel | None = None) -> Attention:
    """`att` norm-weighted, without special tokens, pooled: as `options` ask (notes say which).

    Float16 attention (`extract(store="float16")`) stays float16.
    """
    from dataclasses import replace

    import numpy as np

    from attnviz.analyses.aggregate import aggregate, without_special

    half = att.attn.dtype == np.float16
    options.check(words=att.level == "word")
    if options.weighting == "norm":
        from attnviz.analyses.norms import norm_weighted

        if loaded is None:
            raise InputError("norm weighting needs the model (its output projections)")
        att = norm_weighted(att, loaded)
    if options.hide_special:
        att = without_special(att)
    if options.aggregate is not None:
        att = aggregate(att, options.over, options.aggregate)
    if half and att.attn.dtype != np.float16:
        att = replace(att, attn=att.attn.astype(np.float16))
    return att
