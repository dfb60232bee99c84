"""Sampling methods as races of independent clocks (SPEC.md section 4).

Each example owns a clock that fires at increasing (log-)times that depend only on its own score
and its own counter-based randomness. A method's draw of total T is the multiset of the T earliest
firings over the whole pool, so per-shard work only has to report firings up to a level; the
global part is one order statistic.

SCS, sequential form: each draw picks i with probability proportional to exp(s_i/temp - delta*c_i).
Give example i an exponential clock of rate w_i(c) = exp(a_i - delta*c), a_i = s_i/temp. By
memorylessness the next firing over all clocks is example i with probability w_i / sum_j w_j, so
the order of firings is exactly the sequential process. Its k-th firing happens at
    t_i(k) = exp(-a_i) * sum_{j<k} E_ij * exp(delta*j),  E_ij ~ Exp(1) i.i.d.
HCS (cap K): the same with delta = 0 and no firings after the K-th (a drawn-K-times example is
removed: its clock stops, the others keep their rates). Top-k and threshold use a deterministic
clock that fires once, at log-time -s_i.

Log-times avoid overflow: with R_k = e^{-delta*k} * sum_{j<k} E_ij e^{delta*j} we have
R_{k+1} = (R_k + E_ik) * e^{-delta} (bounded) and log t_i(k) = delta*k + log R_k - a_i.

Representable range. Log-times are float64, so each carries an absolute rounding error of about
2^-52 * |log-time|. A clock's successive firings are apart by at least ~min(delta, 1/k) in log-time;
once |a_i| is so large that this gap falls below one rounding step, firings of one example pile up
on a single float, the order of the race is no longer the sampling law, and a scan up to a level
may have to step through unboundedly many firings (scores near 1e20 never finished). The race
therefore takes only |a_i| = |s_i / temp| <= 2^32 (MAX_LOG_WEIGHT), where log-times are resolved to
~2^-19 (rates to a relative 2e-6), and delta <= 512 (MAX_PENALTY), where e^{-delta} times the
smallest exponential is still a normal float. ``RaceClock.check`` refuses anything else, naming the
shard, row and value. Soft and Hard Cap Sampling depend on the scores only through a softmax, so
subtracting one constant from every score changes no probability: that is the exact way to bring
large scores into range (top-k and threshold compare raw scores and take any finite value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from flyt.errors import FlytError
from flyt.sampling.randomness import exponentials, seed_keys

MAX_LOG_WEIGHT = float(2**32)  # |score / temperature| the race resolves (see the module docstring)
MAX_PENALTY = 512.0  # e^-512 * 2^-53 is still a normal float64


def check_log_weights(scores: np.ndarray, temperature: float, where: str, stride: int = 1) -> None:
    """Refuse scores whose log-weight s / temp lies outside [-2^32, 2^32] (row numbers count every row)."""
    with np.errstate(over="ignore"):
        a = np.asarray(scores, dtype=np.float64) / temperature
    bad = ~(np.abs(a) <= MAX_LOG_WEIGHT)
    if bad.any():
        i = int(np.argmax(bad))
        score = float(scores[i])
        if abs(score) <= MAX_LOG_WEIGHT:  # the temperature is what pushes it out
            hint = f"use a --temperature of at least {abs(score) / MAX_LOG_WEIGHT:.3g}"
        else:
            hint = "subtract a constant from the scores (a common shift leaves the sampling law unchanged)"
        raise FlytError(
            f"{where}: row {i * stride}: score {score!r} / temperature {temperature!r} = {float(a[i]):.6g} is outside "
            f"+-2^32, the log-weights Soft/Hard Cap Sampling resolve: {hint}"
        )


@dataclass
class Scan:
    """Firings of one group of examples relative to a bracket (tau_lo, tau_hi] of log-times."""

    count_lo: np.ndarray  # (n,) uint32: firings at log-time <= tau_lo
    between_t: np.ndarray  # log-times of firings in (tau_lo, tau_hi]
    between_i: np.ndarray  # (same length) int64 example index of each of those firings

    @property
    def n_lo(self) -> int:
        return int(self.count_lo.sum(dtype=np.int64))

    @property
    def n_hi(self) -> int:
        return self.n_lo + len(self.between_t)


@dataclass(frozen=True)
class RaceClock:
    """Soft Cap (delta > 0) or Hard Cap (delta == 0, cap K) sampling; optional cap for both."""

    delta: float
    cap: int | None
    temperature: float
    seed: int

    def prepare(self, fingerprints: np.ndarray, scores: np.ndarray):
        """Per-example state the clock needs: log-weight a_i = s_i / temp and a random key."""
        return scores / self.temperature, seed_keys(fingerprints, self.seed)

    def guess(self, a: np.ndarray, target: float) -> float:
        """A first log-time to search from: where a Poisson race (delta = 0) reaches target."""
        top = float(a.max())
        return math.log(max(target, 1.0)) - (top + math.log(np.exp(a - top).sum()))

    def capacity(self, n: int) -> float:
        return math.inf if self.cap is None else float(self.cap) * n

    def check(self, scores: np.ndarray, where: str, stride: int = 1) -> None:
        check_log_weights(scores, self.temperature, where, stride)

    def scan(self, a: np.ndarray, keys: np.ndarray, tau_lo: float, tau_hi: float) -> Scan:
        """Run every clock up to tau_hi; count firings <= tau_lo, list those in between.

        Vectorised over the examples still running; one round per firing index, so the work is
        O(examples + firings).
        """
        n = len(a)
        count_lo = np.zeros(n, dtype=np.uint32)
        bt, bi = [], []
        q = math.exp(-self.delta)
        ids = np.arange(n, dtype=np.int64)
        a_run, k_run = a, keys
        r = prev = None
        step = 0
        while len(ids):
            e = exponentials(k_run, step)
            if r is None:
                r = e * q
            else:
                r += e
                r *= q
            lt = np.log(r)
            lt += self.delta * (step + 1)
            lt -= a_run
            if prev is not None:
                # Rounding must never let a later firing come earlier: firings stay a prefix.
                np.maximum(lt, prev, out=lt)
            step += 1
            lo = lt <= tau_lo
            count_lo[ids[lo]] = step
            keep = lt <= tau_hi
            mid = keep & ~lo
            if mid.any():
                bt.append(lt[mid])
                bi.append(ids[mid])
            if self.cap is not None and step >= self.cap:
                break
            sel = np.flatnonzero(keep)
            ids, r, prev, a_run, k_run = ids[sel], r[sel], lt[sel], a_run[sel], k_run[sel]
        return _scan(count_lo, bt, bi)


@dataclass(frozen=True)
class RankClock:
    """Top-k / threshold: each example fires once, at log-time -score (best scores first)."""

    def prepare(self, fingerprints: np.ndarray, scores: np.ndarray):
        return scores, fingerprints

    def guess(self, a: np.ndarray, target: float) -> float:
        return -float(np.median(a))

    def capacity(self, n: int) -> float:
        return float(n)

    def check(self, scores: np.ndarray, where: str, stride: int = 1) -> None:
        """Ranks compare raw scores: every finite value (the sources' own check) is fine."""

    def scan(self, a: np.ndarray, keys: np.ndarray, tau_lo: float, tau_hi: float) -> Scan:
        lt = -a
        lo = lt <= tau_lo
        mid = ~lo & (lt <= tau_hi)
        ids = np.flatnonzero(mid)
        return Scan(lo.astype(np.uint32), lt[ids], ids.astype(np.int64))


def _scan(count_lo, bt, bi) -> Scan:
    if bt:
        return Scan(count_lo, np.concatenate(bt), np.concatenate(bi))
    return Scan(count_lo, np.zeros(0, np.float64), np.zeros(0, np.int64))
