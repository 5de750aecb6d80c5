"""What every figure shares: a pyplot-free Agg figure, colour maps and scales, token tick labels,
the hatched mask, numbers written in cells, titles with the text, and the one `save()`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from attnviz.errors import InputError, param
from attnviz.outputs import atomic_output, image_format

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

DEFAULT_CMAP = "viridis"
DEFAULT_DPI = 150
OVERVIEW_DPI = 100
ANNOTATE_MAX = 30  # tokens: beyond this, numbers written in cells cannot be read
MAX_SIDE = 16.0  # inches: a figure grows with the text up to this, then labels are thinned
MAX_GRID = 30.0  # inches: the bound for grids of many panels
CELL = 0.3  # inches per token while the figure may still grow
FONT = 9.0
MIN_FONT = 6.0
LABEL_EVERY_PANEL = 24  # tokens: longer texts get labels on the outer panels of a grid only
LABEL_CHARS = 24  # longer tokens are cut with an ellipsis on the axes
TEXT_CHARS = 70  # the text quoted in a title is cut to this many characters
MASK_HATCH = "////"
MASK_EDGE = "#b0b0b0"
MASKED_LABEL = "masked: future token (causal model)"
HIGHLIGHT = "#ff2d2d"
QUERY_LABEL = "query token (attending from)"
KEY_LABEL = "key token (attending to)"
WEIGHT_LABEL = "attention weight"
SUBTITLE_COLOUR = "#444444"


# -- figures and scales ------------------------------------------------------------------------
def new_figure(size: tuple[float, float], dpi: float, constrained: bool = True) -> Figure:
    """A Figure on an Agg canvas, outside pyplot (no global state, garbage-collected)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def colormap(name: str) -> Colormap:
    """A copy of a named colour map with masked cells transparent; InputError for unknown names."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise InputError(
            f"unknown colour map '{name}'; try viridis, magma, cividis, Blues or Greys"
        ) from None
    return cmap.with_extremes(bad=(0, 0, 0, 0))


def parse_vmax(value: str | float | None) -> float | None:
    """'auto' (or None) -> None (the largest weight shown); otherwise a positive number."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        out = float(value)
    except ValueError:
        raise InputError(f"bad {param('vmax')} '{value}': use a number like 1.0, or auto") from None
    if not math.isfinite(out) or out <= 0:
        raise InputError(f"bad {param('vmax')} '{value}': it must be a number above 0")
    return out


def parse_size(value: str | None) -> tuple[float, float] | None:
    """'8x6' or '8,6' (inches) or '8' (square) -> (width, height); None lets the figure size itself."""
    if value is None:
        return None
    if not value.strip():  # given but empty: an error, not the default size
        raise InputError(f"{param('size')} is empty: use WIDTHxHEIGHT in inches, e.g. 8x6")
    parts = value.lower().replace(",", "x").split("x")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or not all(math.isfinite(n) and 0.5 <= n <= 100 for n in nums):
        raise InputError(
            f"bad {param('size')} '{value}': use WIDTHxHEIGHT in inches, e.g. 8x6 (0.5-100 each)"
        )
    return nums[0], nums[1]


def resolve_vmax(vmax: float | None, arrays: Sequence[np.ndarray], visible: np.ndarray | None) -> float:
    """The top of the colour scale: as given, else the largest visible value shown (so diffuse heads
    are not washed out)."""
    if vmax is not None:
        return float(vmax)
    top = 0.0
    for a in arrays:
        values = a[visible] if visible is not None else a
        if values.size:
            top = max(top, float(np.nanmax(values)))
    return top if top > 0 else 1.0


SCALE_NAMES = ("auto", "max", "log")
LOG_RANGE = 1e-3  # the log scale spans top * LOG_RANGE .. top
SINK_TOKENS = ("[CLS]", "<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>", "<|im_start|>")


def parse_scale(value: str | float | None, name: str = "scale") -> str | float:
    """--scale: auto (the sink left out), max (largest weight shown), log, or a number (the top).

    The old `--vmax auto|NUMBER` values mean the same here. `name` is the caller's keyword for it:
    the plots say `vmax` (the command line's old name for `--scale`).
    """
    if value is None:
        return "auto"
    if isinstance(value, str) and value.strip().lower() in SCALE_NAMES:
        return value.strip().lower()
    try:
        out = float(value)
    except ValueError:
        raise InputError(
            f"bad {param(name)} '{value}': use auto (sink left out), max, log, or a number like 1.0"
        ) from None
    if not math.isfinite(out) or out <= 0:
        raise InputError(f"bad {param(name)} '{value}': a number must be above 0")
    return out


def sink_key(
    arrays: Sequence[np.ndarray], labels: Sequence[str], special: Sequence[bool], causal: bool
) -> int | None:
    """The key column the auto scale leaves out: the first key of a causal model (its first query
    can only attend to itself), or a first [CLS]/BOS key that holds the largest weight."""
    if not labels or not arrays:
        return None
    if causal:
        return 0
    if not (special and special[0]) and labels[0] not in SINK_TOKENS:
        return None
    for a in arrays:
        if a.size and a.shape[-1] > 1 and float(a[..., 0].max()) >= float(a.max()):
            return 0
    return None


@dataclass(frozen=True)
class ColourScale:
    """How weights become colours: a linear 0..vmax or a log scale, and what the legend says."""

    vmax: float
    log: bool = False
    note: str = ""

    @property
    def vmin(self) -> float:
        return self.vmax * LOG_RANGE if self.log else 0.0

    def norm(self) -> Any:
        from matplotlib.colors import LogNorm, Normalize

        return LogNorm(self.vmin, self.vmax) if self.log else Normalize(0.0, self.vmax)

    def label(self, base: str) -> str:
        return f"{base}\n{self.note}" if self.note else base


def resolve_scale(
    scale: str | float | None,
    arrays: Sequence[np.ndarray],
    visible: np.ndarray | None,
    sink: int | None = None,
    sink_label: str = "",
) -> ColourScale:
    """The colour scale for these matrices: `auto` tops at the largest weight outside the sink
    column (sink weights above it get the top colour, and the legend says so)."""
    scale = parse_scale(scale, "vmax")  # the plots' keyword
    if not isinstance(scale, str):
        return ColourScale(float(scale))
    top = resolve_vmax(None, arrays, visible)
    if scale == "log":
        return ColourScale(top, log=True, note=f"log scale, {top * LOG_RANGE:.2g} to {top:.2g}")
    if scale == "max" or sink is None:
        return ColourScale(top)
    rest = [np.delete(np.asarray(a), sink, axis=-1) for a in arrays]
    shown = np.delete(visible, sink, axis=-1) if visible is not None else None
    below = resolve_vmax(None, rest, shown)
    if below >= top:
        return ColourScale(top)
    who = f"{sink_label} " if sink_label else ""
    return ColourScale(below, note=f"auto: sink {who}(key {sink}, up to {top:.2f}) left out")


CONTRAST_STEP = 0.25  # of the colour range: a row shows structure when its top cell stands this far out


def contrast_fraction(panels: Sequence[np.ndarray], visible: np.ndarray | None, scale: ColourScale) -> float:
    """The share of panels with visible contrast on `scale`: at least half their rows have a cell at
    least CONTRAST_STEP of the colour range above the row's median colour (a uniform row has none)."""
    if not panels:
        return 1.0
    norm = scale.norm()
    shown = 0
    for p in panels:
        values = np.maximum(np.asarray(p, dtype=np.float64), scale.vmin) if scale.log else np.asarray(p)
        colour = np.clip(np.asarray(norm(values), dtype=np.float64), 0.0, 1.0)  # [q, k]
        if visible is not None:
            colour = np.where(visible, colour, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a row with nothing visible: NaN
            spread = np.nanmax(colour, -1) - np.nanmedian(colour, -1)
        shown += int(np.mean(np.nan_to_num(spread) >= CONTRAST_STEP) >= 0.5)
    return shown / len(panels)


def readable_scale(
    panels: Sequence[np.ndarray],
    visible: np.ndarray | None,
    sink: int | None = None,
    sink_label: str = "",
) -> ColourScale:
    """`auto` for a grid of many panels: the linear auto scale, unless the text is long (over
    LABEL_EVERY_PANEL keys) and at most half the panels show contrast on it (the rows spread thin),
    then a log scale, and the legend says why. A short text's rows cannot spread thin."""
    linear = resolve_scale("auto", panels, visible, sink, sink_label)
    if not panels or np.shape(panels[0])[-1] <= LABEL_EVERY_PANEL:
        return linear
    share = contrast_fraction(panels, visible, linear)
    if share > 0.5:
        return linear
    top = resolve_vmax(None, panels, visible)
    log = ColourScale(top, log=True)
    k = round(contrast_fraction(panels, visible, log) * len(panels))
    note = (
        f"auto: log scale, {top * LOG_RANGE:.2g} to {top:.2g} (contrast in {k} of {len(panels)} panels;"
        f" linear: {round(share * len(panels))})"
    )
    return ColourScale(top, log=True, note=note)


def colorbar(fig: Any, image: AxesImage, ax: Any, vmax: float, top: float, label: str) -> Any:
    """A colour bar that says (with an arrow) when weights above the scale's top were clipped."""
    bar = fig.colorbar(image, ax=ax, extend="max" if top > vmax * 1.0001 else "neither", shrink=0.9)
    bar.set_label(label)
    return bar


# -- text ------------------------------------------------------------------------------------
def _unsafe(ch: str) -> bool:
    """A character no figure may hold: a control character other than a line break or a tab (NUL,
    ESC, BEL: not allowed in an SVG's XML), a lone surrogate, or one of XML's two non-characters."""
    import unicodedata

    return (unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\n\t") or ch in "\ufffe\uffff"


def clean(label: str) -> str:
    """A label safe in every format: unsafe characters shown as escapes (`\\x1b`), so an SVG is
    well-formed XML whatever the text held, and the reader still sees that something was there."""
    if not any(_unsafe(ch) for ch in label):
        return label
    return "".join(
        (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}") if _unsafe(ch) else ch
        for ch in label
    )


def cut(label: str, chars: int = LABEL_CHARS) -> str:
    """A label of at most `chars` characters (an ellipsis marks the cut), unsafe characters escaped."""
    label = clean(label)
    return label if len(label) <= chars else label[: chars - 1] + "…"


def quoted(text: str | None, chars: int = TEXT_CHARS) -> str:
    """The analysed text for a subtitle: whitespace folded, shortened, in quotes ('' for none)."""
    if not text:
        return ""
    return f"“{cut(' '.join(text.split()), chars)}”"


def with_text(title: str, text: str | None) -> str:
    """A figure title with the text (shortened) on a second line."""
    line = quoted(text)
    return f"{title}\n{line}" if title and line else title or line


def text_inches(text: str, fontsize: float = 12.0) -> float:
    """About how wide (inches) the longest line of `text` is drawn, plus a margin: figures that size
    themselves are made at least this wide, so no title is cut off."""
    longest = max((len(line) for line in text.split("\n")), default=0)
    return longest * fontsize * 0.6 / 72 + 0.4


def label_step(n: int, axis_inches: float, font: float = FONT) -> tuple[int, float]:
    """Show every `step`-th label at `fontsize` so labels of n cells in `axis_inches` never overlap."""
    if n <= 0:
        return 1, font
    room = axis_inches / n * 72 * 0.85  # points per cell a label may use
    if room >= font:
        return 1, font
    if room >= MIN_FONT:
        return 1, room
    step = math.ceil(MIN_FONT / room)
    return step, MIN_FONT


def label_inches(labels: Sequence[str], font: float = FONT) -> float:
    """Room (inches) the longest label needs beside an axis."""
    longest = max((len(cut(x)) for x in labels), default=1)
    return longest * font * 0.6 / 72 + 0.45


def token_ticks(
    axis: Any, labels: Sequence[str], inches: float, highlight: Sequence[int] = (), shown: bool = True
) -> None:
    """Token labels on one axis, thinned when there are too many to read; highlighted ones kept."""
    step, font = label_step(len(labels), inches)
    ticks = sorted(set(range(0, len(labels), step)) | {h for h in highlight if 0 <= h < len(labels)})
    axis.set_ticks(ticks)
    if not shown:
        axis.set_ticklabels([])
        return
    axis.set_ticklabels([cut(labels[i]) for i in ticks], fontsize=font, parse_math=False)
    for tick, label in zip(ticks, axis.get_ticklabels(), strict=True):
        if tick in highlight:
            label.set_color(HIGHLIGHT)
            label.set_fontweight("bold")


def set_ticks(
    ax: Axes,
    rows: Sequence[str],
    cols: Sequence[str],
    axis_inches: tuple[float, float],
    highlight: Sequence[int] = (),
    show: tuple[bool, bool] = (True, True),
) -> None:
    """Token labels on both axes of a heatmap; `show` (rows, columns) False keeps ticks, no labels."""
    token_ticks(ax.yaxis, rows, axis_inches[1], highlight, show[0])
    token_ticks(ax.xaxis, cols, axis_inches[0], highlight, show[1])
    ax.tick_params(axis="x", labelrotation=90, length=2)
    ax.tick_params(axis="y", length=2)


def layer_head_ticks(ax: Axes, layers: Sequence[int], heads: Sequence[int], fontsize: float = 8.0) -> None:
    """Every layers x heads grid labels its cells the same way: rows L0, L1..., columns H0, H1...
    (as the overview's panels and the printed tables, e.g. L18H6)."""
    ax.set_xticks(range(len(heads)), [f"H{h}" for h in heads], fontsize=fontsize)
    ax.set_yticks(range(len(layers)), [f"L{layer}" for layer in layers], fontsize=fontsize)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")


# -- drawing ---------------------------------------------------------------------------------
def mask_patch(edge: str = MASK_EDGE) -> Any:
    """The legend entry for hatched (masked) cells."""
    from matplotlib.patches import Patch

    return Patch(facecolor="white", edgecolor=edge, hatch=MASK_HATCH, label=MASKED_LABEL)


def write_cells(
    ax: Axes,
    values: np.ndarray,
    cmap: Colormap,
    vmax: float,
    *,
    fmt: str = "{:.2f}",
    fontsize: float = 7.0,
    skip: np.ndarray | None = None,
) -> None:
    """A number in every cell of an image, white on dark colours and black on light ones."""
    values = np.asarray(values, dtype=float)  # [rows, cols]
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if (skip is not None and skip[i, j]) or not np.isfinite(values[i, j]):
                continue
            r, g, b, _ = cmap(min(1.0, values[i, j] / vmax) if vmax > 0 else 0.0)
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(
                j,
                i,
                fmt.format(values[i, j]),
                ha="center",
                va="center",
                fontsize=fontsize,
                color="white" if dark else "black",
                zorder=2,
            )


def draw_matrix(
    ax: Axes,
    matrix: np.ndarray,
    *,
    visible: np.ndarray | None,
    vmax: float,
    cmap: Colormap,
    annotate: bool = False,
    highlight: Sequence[int] = (),
    cell_inches: float = CELL,
    scale: ColourScale | None = None,
) -> AxesImage:
    """One [q, k] matrix on `ax`: masked cells hatched (not zero), optional numbers and outlines."""
    from matplotlib.patches import Rectangle

    matrix = np.asarray(matrix, dtype=np.float32)  # [q, k]
    n_q, n_k = matrix.shape
    hidden = ~visible if visible is not None else np.zeros((n_q, n_k), dtype=bool)  # [q, k]
    if scale is not None and scale.log:
        matrix = np.maximum(matrix, scale.vmin)  # zeros get the bottom colour, not a hole
    masked = np.ma.masked_array(matrix, mask=hidden)
    if hidden.any():
        ax.add_patch(
            Rectangle(
                (-0.5, -0.5),
                n_k,
                n_q,
                facecolor="white",
                edgecolor=MASK_EDGE,
                hatch=MASK_HATCH,
                linewidth=0,
                zorder=0.5,
            )
        )
    limits = {"norm": scale.norm()} if scale is not None else {"vmin": 0.0, "vmax": vmax}
    image = ax.imshow(masked, cmap=cmap, aspect="equal", zorder=1, **limits)
    ax.set_xlim(-0.5, n_k - 0.5)
    ax.set_ylim(n_q - 0.5, -0.5)
    if annotate:
        font = max(4.0, min(8.0, cell_inches * 72 * 0.32))
        write_cells(ax, matrix, cmap, vmax, fontsize=font, skip=hidden)
    for h in highlight:
        style = {"fill": False, "edgecolor": HIGHLIGHT, "linewidth": 1.4, "zorder": 3}
        if 0 <= h < n_q:
            ax.add_patch(Rectangle((-0.5, h - 0.5), n_k, 1, **style))
        if 0 <= h < n_k:
            ax.add_patch(Rectangle((h - 0.5, -0.5), 1, n_q, **style))
    return image


# -- files ----------------------------------------------------------------------------------
MAX_PIXELS = 400_000_000  # 4 bytes a pixel while drawing: 1.6 GB at most; a 16-inch figure at 1,200 dpi fits
MAX_PIXEL_SIDE = 32_768  # pixels on one side (Agg itself stops at 65,536)


def check_pixels(size: Sequence[float] | None, dpi: float | None) -> None:
    """Refuse a figure of more than MAX_PIXELS (or a side over MAX_PIXEL_SIDE) before drawing it:
    `--size 100x100 --dpi 1200` would need tens of gigabytes. InputError naming size and dpi, and
    for a resolution outside 10-1200 dots per inch (NaN too)."""
    if dpi is not None and not 10 <= dpi <= 1200:
        raise InputError(f"bad {param('dpi')} {dpi}: use a resolution between 10 and 1200")
    if size is None:
        return
    dots = float(dpi or DEFAULT_DPI)
    width, height = (float(x) * dots for x in size)
    if width * height <= MAX_PIXELS and max(width, height) <= MAX_PIXEL_SIDE:
        return
    raise InputError(
        f"the figure would be {width:,.0f} x {height:,.0f} pixels, more than attnviz draws "
        f"({MAX_PIXELS // 1_000_000} million, at most {MAX_PIXEL_SIDE:,} a side): lower "
        f"{param('dpi')} or {param('size')}"
    )


def _clean_texts(fig: Figure) -> None:
    """Every text of the figure made safe (`clean`), whoever drew it: the last guard before a file."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        label = text.get_text()
        if isinstance(label, str) and (safe := clean(label)) != label:
            text.set_text(safe)


def save(fig: Figure, path: str | Path, dpi: float | None = None) -> Path:
    """Write any attnviz figure; the format comes from the extension (png, svg, pdf), the folder is
    made if missing, and the file carries no date or version (the same figure, the same bytes).
    Written atomically; a symbolic link is refused, never written through."""
    from attnviz.plots.fonts import fonts

    path = Path(path)
    fmt = image_format(path)
    check_pixels(fig.get_size_inches(), dpi or fig.dpi)
    _clean_texts(fig)
    metadata: dict[str, Any] = {
        "png": {"Software": None},
        "svg": {"Date": None},
        "pdf": {"CreationDate": None},
    }[fmt]
    try:
        with fonts(), atomic_output(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi or fig.dpi, metadata=metadata)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
