"""A reward-hacking watch: does the policy still improve what we want, or only what it is trained on?

An alignment run raises a **proxy**: the score its objective climbs (SPO's mean step-aware score,
a learned reward's mean). A proxy is a model, and a policy can find where it is wrong: on the toy
benchmark SPO lifts its step-aware model's mean score from 6.1 to 13.4 while the true reward
rises and then falls. An independent **true** measure, on fixed prompts and seeds (the toy's
reward, a held-out reward model, GenEval), shows it. :class:`RewardHackingWatch` is fed both at
every evaluation point and says when they part:

- the true reward's peak is its best value so far (``T*`` at step ``s*``; the first step that
  reached it), and ``P*`` the proxy at that step;
- an evaluation ``(step, P, T)`` is **divergent** when the true reward has fallen from its peak
  by more than ``tolerance`` (``T* − T > tolerance``, in the true reward's units) *and* the proxy
  has gone on rising since (``P − P* > proxy_tolerance``, in the proxy's units). A falling proxy
  with a falling true reward is a run that got worse, not one that games its proxy;
- the watch **fires** at the ``patience``-th divergent evaluation in a row: it records a
  :class:`Divergence` whose message names both curves and the step where the true reward
  peaked, warns (:class:`RewardHackingWarning`) and, when asked with ``stop=True``, says
  :attr:`~RewardHackingWatch.should_stop`. One warning per episode: it fires again only after an
  evaluation that is not divergent.

The tolerance is absolute, so set it above the evaluation's noise (e.g. two standard errors of
the mean true reward over its fixed seeds): a true reward that wobbles below it never fires.

Pure Python (numbers or 0-d tensors in, ``float`` inside); no model is loaded here. The
evaluation/ folder's other modules score images; this one only compares two curves, so a
training loop can hold one without importing diffusers.

"Reward hacking", not "divergence": in this project a divergence is the KL or f-divergence an
objective regularises with, which this module has nothing to do with.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass


class RewardHackingWarning(UserWarning):
    """The proxy a run raises and an independent true reward have parted (:class:`RewardHackingWatch`)."""


@dataclass(frozen=True)
class Divergence:
    """One firing of the watch: at ``step`` the proxy had risen from ``proxy_at_peak`` (at
    ``peak_step``) to ``proxy`` while the true reward had fallen from ``peak_true`` to ``true``;
    ``evaluations``: divergent evaluations in a row (``patience`` when it fired)."""

    step: int
    peak_step: int
    peak_true: float
    true: float
    proxy_at_peak: float
    proxy: float
    evaluations: int
    message: str


class RewardHackingWatch:
    """Watches a proxy score and a true reward for divergence (module docstring).

    Args:
        tolerance: how far (true-reward units, ≥ 0) the true reward must fall below its best.
        patience: divergent evaluations in a row before the watch fires (≥ 1).
        proxy_tolerance: how far (proxy units, ≥ 0) the proxy must have risen since the true
            reward's peak for it to count as still rising.
        stop: whether a firing means training should stop (:attr:`should_stop`).
        warn: issue a :class:`RewardHackingWarning` when it fires.
        proxy_name, true_name: how messages call the two curves.

    Example::

        watch = RewardHackingWatch(tolerance=0.02, patience=2, stop=True,
                                   proxy_name="SPO's mean step-aware score", true_name="toy reward")
        for step in evaluation_steps:
            watch.update(step, proxy_score, true_reward)
            if watch.should_stop:
                break
    """

    def __init__(self, tolerance: float = 0.0, patience: int = 1, proxy_tolerance: float = 0.0, stop: bool = False,
                 warn: bool = True, proxy_name: str = "proxy score", true_name: str = "true reward"):
        if not (tolerance >= 0 and proxy_tolerance >= 0):
            raise ValueError(f"tolerance and proxy_tolerance are distances, ≥ 0; got {tolerance}, {proxy_tolerance}")
        if patience < 1:
            raise ValueError(f"patience counts evaluations, ≥ 1; got {patience}")
        self.tolerance, self.patience, self.proxy_tolerance = float(tolerance), int(patience), float(proxy_tolerance)
        self.stop, self.warn, self.proxy_name, self.true_name = stop, warn, proxy_name, true_name
        self.history: list[tuple[int, float, float]] = []
        """``(step, proxy, true)`` per evaluation, in order."""
        self.events: list[Divergence] = []
        self.peak: tuple[int, float, float] | None = None
        """``(step, true, proxy)`` where the true reward was best so far."""
        self.in_a_row = 0

    @property
    def diverged(self) -> bool:
        """Whether the watch has fired at least once."""
        return bool(self.events)

    @property
    def should_stop(self) -> bool:
        """Whether training should stop: the watch has fired and was built with ``stop=True``."""
        return self.stop and self.diverged

    def update(self, step: int, proxy_score: float, true_reward: float) -> Divergence | None:
        """Add one evaluation point; returns the :class:`Divergence` when the watch fires at it.

        Args:
            step: the training step of the evaluation (strictly increasing).
            proxy_score: the value the policy is trained to raise (a float or 0-d tensor).
            true_reward: the independent measure, on the same fixed prompts and seeds each time.
        """
        step, proxy, true = int(step), float(proxy_score), float(true_reward)
        if not (math.isfinite(proxy) and math.isfinite(true)):
            raise ValueError(f"step {step}: the {self.proxy_name} ({proxy}) and the {self.true_name} ({true}) "
                             "must be finite numbers")
        if self.history and step <= self.history[-1][0]:
            raise ValueError(f"steps must increase: got step {step} after step {self.history[-1][0]}")
        self.history.append((step, proxy, true))
        if self.peak is None or true > self.peak[1]:
            self.peak = (step, true, proxy)
        peak_step, peak_true, proxy_at_peak = self.peak
        divergent = peak_true - true > self.tolerance and proxy - proxy_at_peak > self.proxy_tolerance
        self.in_a_row = self.in_a_row + 1 if divergent else 0
        if self.in_a_row != self.patience:  # not yet, or already reported for this episode
            return None
        message = (f"reward hacking suspected at step {step}: the {self.proxy_name} kept rising "
                   f"({proxy_at_peak:.4g} at step {peak_step} → {proxy:.4g}) while the {self.true_name} fell from "
                   f"its peak {peak_true:.4g} at step {peak_step} to {true:.4g} (−{peak_true - true:.4g}, tolerance "
                   f"{self.tolerance:.4g}; {self.in_a_row} evaluation(s) in a row)"
                   + ("; training should stop" if self.stop else ""))
        event = Divergence(step, peak_step, peak_true, true, proxy_at_peak, proxy, self.in_a_row, message)
        self.events.append(event)
        if self.warn:
            warnings.warn(message, RewardHackingWarning, stacklevel=2)
        return event

    def summary(self) -> dict:
        """JSON-ready ``{"history", "peak_step", "events", "should_stop"}`` for a run's log."""
        return {"history": [list(h) for h in self.history], "peak_step": self.peak and self.peak[0],
                "events": [asdict(e) for e in self.events], "should_stop": self.should_stop}

    def state_dict(self) -> dict:
        """What a resumed run needs to watch on as if never interrupted (JSON-ready)."""
        return {"history": [list(h) for h in self.history], "events": [asdict(e) for e in self.events],
                "peak": None if self.peak is None else list(self.peak), "in_a_row": self.in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.history = [(int(s), float(p), float(t)) for s, p, t in state["history"]]
        self.events = [Divergence(**e) for e in state["events"]]
        self.peak = None if state["peak"] is None else (int(state["peak"][0]), *map(float, state["peak"][1:]))
        self.in_a_row = int(state["in_a_row"])


__all__ = ["Divergence", "RewardHackingWarning", "RewardHackingWatch"]
