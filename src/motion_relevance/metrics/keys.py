"""The names of logged metrics: one place for the key rules that the callbacks, ``mr-explain``, ``mr-report`` and
the figures share.

A logged key is ``<stage>/<metric>[_<stat>]/<method>``: ``test/precision/dtd`` (the mean over clips),
``test/precision_std/dtd``, ``test/precision_n/dtd`` and ``test/precision_n_undefined/dtd``. Methods are the
explainer names (``dtd``, ``gradcam`` …), their selective maps (``dtd_selective``; with several sigmas in one run
``dtd_selective_s2``), pairs (``dtd~gradcam``) and, for quantities of a baseline at one of several sigmas,
``dtd@s2``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "GROUND_TRUTH",
    "STATS",
    "TEMPORAL_METRICS",
    "TEMPORAL_SHARE",
    "MetricKey",
    "at_sigma",
    "is_baseline",
    "metric_key",
    "pair",
    "parse_key",
    "selective",
    "split_selective",
    "stage_prefix",
]

#: Statistics logged beside each mean (the mean itself has no suffix).
STATS = ("mean", "std", "n", "n_undefined")
SELECTIVE = "_selective"
#: Method name of the ground-truth mask's per-frame shares in ``temporal.csv`` (synthetic data).
GROUND_TRUTH = "ground_truth"
#: The temporal-window test ("When" in docs/method.md), quantity -> metric name; logged under the baseline's name
#: (``test/temporal_advantage/dtd``, ``dtd@s2`` with several sigmas): the drops from freezing ``w`` frames around
#: the selective map's top frame, the baseline's top frame and a random frame, and the paired selective - random.
TEMPORAL_METRICS = {
    "selective": "temporal_drop_selective",
    "baseline": "temporal_drop_baseline",
    "random": "temporal_drop_random",
    "advantage": "temporal_advantage",
}
#: The cross-frame share of the relevance through a video transformer's attention products ("How much relevance
#: flows through time" in docs/method.md): ``test/temporal_share/attnlrp``, for AttnLRP explainers of models with a
#: registered token -> frame map only.
TEMPORAL_SHARE = "temporal_share"
_SELECTIVE_RE = re.compile(r"^(?P<base>.+?)_selective(?:_s(?P<sigma>[0-9.eE+-]+))?$")
_AT_SIGMA_RE = re.compile(r"^(?P<base>.+)@s(?P<sigma>[0-9.eE+-]+)$")


def stage_prefix(stage: str) -> str:
    """Lightning's stage name to the key prefix: ``"validate"`` -> ``"val"``; ``"test"`` stays."""
    return "val" if stage in ("validate", "val") else stage


def selective(method: str, sigma: float, multi: bool) -> str:
    """Name of the selective map of ``method`` at ``sigma``: ``dtd_selective``, or ``dtd_selective_s2`` when the run
    evaluates several sigmas (``multi``)."""
    return f"{method}{SELECTIVE}_s{sigma:g}" if multi else f"{method}{SELECTIVE}"


def at_sigma(method: str, sigma: float, multi: bool) -> str:
    """Name under which a baseline's per-sigma quantities (selectivity, spatial bias) are logged."""
    return f"{method}@s{sigma:g}" if multi else method


def pair(a: str, b: str) -> str:
    """Name of the agreement of two methods."""
    return f"{a}~{b}"


def split_selective(method: str) -> tuple[str, float | None] | None:
    """``dtd_selective`` -> ``("dtd", None)``, ``dtd_selective_s2`` -> ``("dtd", 2.0)``, others -> None."""
    match = _SELECTIVE_RE.match(method)
    if match is None:
        return None
    return match["base"], None if match["sigma"] is None else float(match["sigma"])


#: Method names of values that belong to no explainer: the selective step's overhead, the faithfulness tests'
#: random-order floor, the model's motion reliance and the ground-truth mask's per-frame shares (``temporal.csv``).
NOT_EXPLAINERS = ("selective", "random", "model", GROUND_TRUTH)


def is_baseline(method: str) -> bool:
    """True for an explainer's own name (not a selective map, a pair, a per-sigma name, the selective step, the
    random-order floor or the model-level values)."""
    return not (SELECTIVE in method or "~" in method or _AT_SIGMA_RE.match(method) or method in NOT_EXPLAINERS)


def metric_key(stage: str, metric: str, method: str, stat: str = "mean") -> str:
    """``test/precision/dtd`` for the mean, ``test/precision_std/dtd`` for ``stat="std"`` …"""
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    name = metric if stat == "mean" else f"{metric}_{stat}"
    return f"{stage_prefix(stage)}/{name}/{method}"


@dataclass(frozen=True)
class MetricKey:
    """The parts of a logged key."""

    stage: str
    metric: str
    stat: str
    method: str


def parse_key(key: str) -> MetricKey | None:
    """Split a key of :func:`metric_key`'s form; None for other keys (``test/acc``, ``objective`` …)."""
    parts = key.split("/")
    if len(parts) != 3:
        return None
    stage, name, method = parts
    for stat in STATS[1:]:
        if name.endswith(f"_{stat}") and not (stat == "n" and name.endswith("_n_undefined")):
            return MetricKey(stage, name[: -len(stat) - 1], stat, method)
    return MetricKey(stage, name, "mean", method)
