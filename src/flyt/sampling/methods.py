"""What the user asked for (method and options), validated, and the clock that implements it."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from flyt.errors import FlytError
from flyt.sampling.clocks import MAX_PENALTY, RaceClock, RankClock

METHODS = ("scs", "hcs", "topk", "threshold")
# --fraction F of N rows. datacomp (default): DataComp's baselines.py rule: n = int(N * F) (a float64
# product, truncated), t = the (n+1)-th best score (ties counted), keep every row with score >= t:
# n + 1 rows or more (all N rows when n = N). exact: the n best rows (at least 1), ties at the cut to
# the smaller uid.
FRACTION_RULES = ("datacomp", "exact")
SEED_LIMIT = 1 << 64  # seeds are mixed as 64-bit words: a larger one would silently equal a smaller one
_INTS = ("total", "cap", "count", "batch", "budget", "seed")
_REALS = ("penalty", "fraction", "threshold")


@dataclass(frozen=True)
class SampleSpec:
    """Options of ``flyt sample``; ``validate`` names the offending option in one line."""

    method: str
    total: int | None = None  # scs/hcs: draws; topk/threshold: samples seen (default budget)
    penalty: float | None = None  # scs: Delta
    cap: int | None = None  # hcs: K (optional extra cap for scs)
    temperature: float = 1.0
    fraction: float | None = None  # topk
    fraction_rule: str | None = None  # topk --fraction: datacomp (default) or exact (see FRACTION_RULES)
    count: int | None = None  # topk
    threshold: float | None = None  # threshold
    batch: int | None = None  # scs/hcs: the authors' batched procedure (in memory)
    budget: int | None = None  # samples seen, for the repeats a subset needs
    seed: int = 0

    def validate(self) -> "SampleSpec":
        m = self.method
        if m not in METHODS:
            raise FlytError(f"--method must be one of {', '.join(METHODS)}, got {m!r}")
        self._check_types()
        if self.fraction_rule is not None and (not isinstance(self.fraction_rule, str) or self.fraction_rule not in FRACTION_RULES):
            raise FlytError(f"--fraction-rule must be one of {', '.join(FRACTION_RULES)}, got {self.fraction_rule!r}")
        if self.fraction_rule is not None and m != "topk":
            raise FlytError(f"--fraction-rule applies to --method topk, not {m}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise FlytError(f"--temperature must be positive, got {self.temperature}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise FlytError(f"--seed must be an integer in [0, 2^64), got {self.seed}")
        if self.budget is not None and self.budget < 1:
            raise FlytError(f"--budget must be a positive integer, got {self.budget}")
        if self.cap is not None and self.cap < 1:
            raise FlytError(f"--cap must be a positive integer, got {self.cap}")
        if self.batch is not None and m not in ("scs", "hcs"):
            raise FlytError(f"--batch applies to --method scs or hcs, not {m}")
        if m in ("scs", "hcs"):
            if self.total is None or self.total < 1:
                raise FlytError(f"--method {m} needs --total N with N >= 1 (got {self.total})")
            if self.batch is not None and self.batch < 1:
                raise FlytError(f"--batch must be a positive integer, got {self.batch}")
            self._forbid("fraction", "count", "threshold")
        if m == "scs":
            if self.penalty is None:
                raise FlytError("--method scs needs --penalty D (the paper uses 0.15 or 0.25)")
            if not (math.isfinite(self.penalty) and self.penalty > 0):
                raise FlytError(f"--penalty must be positive, got {self.penalty}")
            if self.penalty > MAX_PENALTY:
                raise FlytError(f"--penalty must be in (0, {MAX_PENALTY:g}], got {self.penalty:g} "
                                f"(a copy's weight would drop by e^-{self.penalty:g}, below what the clocks represent)")
        if m == "hcs":
            if self.cap is None:
                raise FlytError("--method hcs needs --cap K")
            if self.penalty is not None:
                raise FlytError("--penalty applies to --method scs, not hcs")
        if m == "topk":
            if (self.fraction is None) == (self.count is None):
                raise FlytError("--method topk needs exactly one of --fraction F or --count N")
            if self.fraction is not None and not (0 < self.fraction <= 1):
                raise FlytError(f"--fraction must be in (0, 1], got {self.fraction}")
            if self.count is not None and self.count < 1:
                raise FlytError(f"--count must be a positive integer, got {self.count}")
            if self.fraction is None and self.fraction_rule is not None:
                raise FlytError("--fraction-rule applies to --fraction, not --count")
            self._forbid("penalty", "cap", "threshold")
        if m == "threshold":
            if self.threshold is None or not math.isfinite(self.threshold):
                raise FlytError("--method threshold needs a finite --threshold X")
            self._forbid("penalty", "cap", "fraction", "count")
        return self

    def _check_types(self) -> None:
        """Python callers can pass anything: integers must be ints (not bools), numbers real."""
        for name in _INTS:
            v = getattr(self, name)
            if (v is not None or name == "seed") and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
                raise FlytError(f"--{name} must be an integer, got {v!r}")
        for name in (*_REALS, "temperature"):
            v = getattr(self, name)
            if (v is not None or name == "temperature") and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise FlytError(f"--{name} must be a number, got {v!r}")

    def _forbid(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) is not None:
                raise FlytError(f"--{name} does not apply to --method {self.method}")

    def clock(self):
        if self.method == "scs":
            return RaceClock(self.penalty, self.cap, self.temperature, self.seed)
        if self.method == "hcs":
            return RaceClock(0.0, self.cap, self.temperature, self.seed)
        return RankClock()

    def parameters(self) -> dict:
        """The options that shaped the result (for the summary)."""
        skip = {"method", "seed"} | ({"temperature"} if self.method in ("topk", "threshold") else set())
        out = {k: v for k, v in asdict(self).items() if k not in skip and v is not None}
        if self.method == "topk" and self.fraction is not None:
            out["fraction_rule"] = self.rule()
        return out

    def rule(self) -> str:
        """The --fraction rule in force (DataComp's unless asked otherwise)."""
        return self.fraction_rule or "datacomp"
