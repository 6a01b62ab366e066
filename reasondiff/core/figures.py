"""One look for every figure the pipeline draws, and one way to save them.

Every stage that plots (bench, analyze, ...) takes its theme, model and class colours, captions and
`save` from here, so a figure in the report looks like its neighbours and a restyle touches one
file. `save` writes each figure twice, as PNG (for the report and quick looks) and PDF (vector, for
a paper), both atomically. `CAPTIONS` numbers the figures as the paper does (Fig. 2 the SFT loss,
Fig. 3 time and Fig. 4 accuracy against the token limit, Figs. 5-6 the decoder geometry).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from reasondiff.core import artifacts

FORMATS = ("png", "pdf")
"""Every figure is saved in these formats, side by side (same stem)."""
DPI = 150

MODEL_STYLES: dict[str, dict[str, object]] = {
    "base": {"color": "#1f5fa8", "marker": "o", "linestyle": "-"},
    "tuned": {"color": "#c0504d", "marker": "s", "linestyle": "--"},
}
"""Base and tuned stay distinguishable in greyscale and where their points overlap: colour, marker
and line style all differ."""
_EXTRA_STYLES = ({"marker": "^", "linestyle": ":"}, {"marker": "D", "linestyle": "-."}, {"marker": "v", "linestyle": "-"})

CLASS_COLORS = {"base_only": "#1f5fa8", "tuned_only": "#c0504d", "shared": "#2b7a2b", "other": "#888888",
                "designated_shared": "#7b3fa0", "dead": "#cccccc"}
"""Latent classes (by relative decoder norm) in every figure and in latents.html."""

CAPTIONS = {
    "loss_curve": "Fig. 2: SFT loss on s1K-1.1 against the training step.",
    "time_vs_limit": "Fig. 3: generation time and tokens generated against the token limit.",
    "accuracy_vs_limit": "Fig. 4: accuracy against the token limit, Wilson 95% intervals.",
    "relative_norm_hist": "Fig. 5: relative decoder norm r = ‖d_tuned‖ / (‖d_base‖ + ‖d_tuned‖) of the live latents.",
    "cosine_hist": "Fig. 6: cosine similarity between the base and tuned decoder vectors of shared latents.",
    "decoder_norms": "‖d_base‖ against ‖d_tuned‖ per latent (log axes), coloured by class.",
    "frequency_hist": "Firing frequency (log10) per latent class on held-out general text.",
    "latent_scaling": "Latent Scaling (Minder et al. 2025): ν_error against ν_reconstruction of model-specific latents.",
    "training_curves": "Crosscoder training curves (train/metrics.csv, on training batches).",
}
"""The caption of each figure by file stem; numbered as in the paper where the paper has it."""


def model_style(model: str, index: int = 0) -> dict[str, object]:
    """Colour, marker and line style of a model's series (base and tuned fixed, others cycled)."""
    if model in MODEL_STYLES:
        return dict(MODEL_STYLES[model])
    import seaborn as sns

    extra = _EXTRA_STYLES[index % len(_EXTRA_STYLES)]
    return {"color": sns.color_palette("colorblind")[(index + 2) % 10], **extra}


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), with the theme applied."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    apply_theme()
    return plt


def apply_theme() -> None:
    """seaborn's whitegrid at paper scale; fonts embedded as TrueType in PDFs (editable text)."""
    import matplotlib
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", palette="colorblind", font_scale=1.1,
                  rc={"axes.titlesize": 10, "figure.titlesize": 11, "legend.fontsize": 8, "legend.frameon": False,
                      "savefig.bbox": "tight", "axes.spines.top": False, "axes.spines.right": False})
    matplotlib.rcParams["pdf.fonttype"] = 42
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # embedding TrueType logs every subset at INFO


@contextlib.contextmanager
def themed() -> Iterator[object]:
    """`with themed() as plt:` the themed pyplot, the previous rcParams restored afterwards."""
    import matplotlib

    with matplotlib.rc_context():
        yield pyplot()


def outputs_of(path: Path) -> list[Path]:
    """The files `save(fig, path)` writes: the path's stem in every format of FORMATS."""
    path = Path(path)
    return [path.with_suffix(f".{fmt}") for fmt in FORMATS]


def save(fig, path: Path) -> Path:
    """Save `fig` as PNG and PDF next to each other (atomically), close it, return the PNG's path."""
    import matplotlib.pyplot as plt

    written = outputs_of(path)
    try:
        for target, fmt in zip(written, FORMATS, strict=True):
            artifacts.atomic_save(target, lambda tmp, fmt=fmt: fig.savefig(tmp, dpi=DPI, bbox_inches="tight",
                                                                            format=fmt))
    finally:
        plt.close(fig)
    return written[0]


def caption(stem: str, default: str = "") -> str:
    """The paper-numbered caption of the figure saved under `stem` (or `default`)."""
    return CAPTIONS.get(stem, default or stem.replace("_", " "))
