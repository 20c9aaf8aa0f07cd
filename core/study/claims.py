"""How sure a figure is, and whether the study's conclusions hold on the user's data.

A test accuracy measured on N test images is uncertain by the test set's sampling alone (a binomial
proportion: about ±2 points at 95% on MIT_split's 807 images), and a run trained with another seed
(another validation split, small set and initial weights) lands elsewhere again. :func:`estimate` puts
both into one 95% interval: the spread of the seeds (Student's t over the repeats, when there are two or
more) and the test set's sampling (Agresti-Coull: the binomial's normal approximation with two successes
and two failures added, so a perfect score on a tiny test set is not "certain"), added in quadrature.

:func:`study_claims` turns the reproduced table into one line per conclusion of the study, each with our
difference, its interval and a plain verdict. A difference of two rows counts their intervals as
independent (they share the test images, so this is conservative: a verdict of "holds here" or "not
here" is safe, "too close to tell" may be pessimistic).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

Z95 = 1.959964
#: Student's t at 97.5% for 1..30 degrees of freedom (scipy.stats.t.ppf(0.975, df)), no SciPy needed at run time
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip
#: "keeps the accuracy": no worse than this (2 points, about one test-set interval on 807 images)
KEEP_MARGIN = 0.02
HOLDS, NOT_HERE, TOO_CLOSE, MISSING = "holds here", "not here", "too close to tell", "not measured yet"


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else Z95


@dataclass(frozen=True)
class Estimate:
    """A figure over one or more seeds: its mean and the half-width of its 95% interval."""

    mean: float
    half: float
    n: int  # seeds

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def estimate(values: Sequence[float], n_eval: int | None) -> Estimate | None:
    """The mean of ``values`` (one per seed) with a 95% interval from the seeds' spread and from sampling
    ``n_eval`` evaluation images (None: the seeds' spread alone)."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return None
    n, mean = len(vals), sum(vals) / len(vals)
    seed_half = 0.0
    if n > 1:
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
        seed_half = t975(n - 1) * sd / math.sqrt(n)
    sample_half = 0.0
    if n_eval:
        p = (mean * n_eval + 2.0) / (n_eval + 4.0)
        sample_half = Z95 * math.sqrt(p * (1.0 - p) / (n_eval + 4.0))
    return Estimate(mean, math.hypot(seed_half, sample_half), n)


def difference(a: Estimate, b: Estimate) -> Estimate:
    return Estimate(a.mean - b.mean, math.hypot(a.half, b.half), min(a.n, b.n))


@dataclass(frozen=True)
class Claim:
    """One conclusion of the study, checked on our rows."""

    key: str
    claim: str  # the study's words
    measure: str  # what we compare
    diff: float | None
    low: float | None
    high: float | None
    verdict: str
    rows: tuple[str, ...]  # the row keys it reads

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sentence(self) -> str:
        if self.diff is None:
            return f"{self.claim}: {self.verdict}."
        return (f"{self.claim}: {self.verdict} ({self.measure} {_signed(self.diff)}, 95% interval "
                f"{_signed(self.low)} to {_signed(self.high)}).")  # fmt: skip


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.3f}".replace("-", "−")


def verdict(d: Estimate, margin: float = 0.0) -> str:
    """"holds here" when the whole interval of A − B lies above ``-margin`` (above 0 for "A beats B"),
    "not here" when it lies below, else "too close to tell"."""
    if d.low > -margin:
        return HOLDS
    if d.high < -margin:
        return NOT_HERE
    return TOO_CLOSE


#: (key, the study's words, what is compared, row A, row B, figure, margin): the claim is "A beats B"
#: (margin 0) or "A keeps B's accuracy" (A - B above -margin)
CLAIMS = (
    ("truncate", "−1 block keeps the accuracy of the uncut network", "test accuracy, −1 block minus uncut",
     "t1-cut1", "t1-cut0", "test", KEEP_MARGIN),
    ("overfit", "The small set overfits", "train − validation gap, small set minus full set",
     "t2-small", "t2-full", "gap", 0.0),
    ("augment", "Augmentation beats the small-set baseline", "test accuracy, augmentation minus small set",
     "t3-best", "t2-small", "test", 0.0),
    ("regularise", "Regularisation beats augmentation alone", "test accuracy, regularised minus augmentation",
     "t4-best", "t3-best", "test", 0.0),
    ("search", "The search beats the hand-tuned run", "test accuracy, search's best minus task 0",
     "t5-search", "t0-finetune", "test", 0.0),
    ("finetune", "Fine-tuning beats the frozen backbone", "test accuracy, fine-tuned minus head only",
     "t0-finetune", "t0-head", "test", 0.0),
)  # fmt: skip


def study_claims(figures: Mapping[str, Mapping[str, Estimate | None]]) -> list[Claim]:
    """One :class:`Claim` per conclusion from ``figures`` (row key -> {"test": Estimate, "gap": Estimate})."""
    out = []
    for key, words, measure, a_key, b_key, fig, margin in CLAIMS:
        a, b = figures.get(a_key, {}).get(fig), figures.get(b_key, {}).get(fig)
        if a is None or b is None:
            out.append(Claim(key, words, measure, None, None, None, MISSING, (a_key, b_key)))
            continue
        d = difference(a, b)
        out.append(Claim(key, words, measure, round(d.mean, 4), round(d.low, 4), round(d.high, 4), verdict(d, margin),
                         (a_key, b_key)))  # fmt: skip
    return out
