"""The reward-hacking watch on synthetic curves: a rising proxy over a falling true reward fires at
the step it should (and names both curves and the peak); both rising, noise below the tolerance
and both falling never fire; patience needs divergence in a row; a resumed watch goes on alike."""

import json
import random
import warnings

import pytest
import torch

from diffalign.evaluation.reward_hacking import RewardHackingWarning, RewardHackingWatch

STEPS = [10 * k for k in range(10)]
PROXY = [6.1 + 0.8 * k for k in range(10)]  # like SPO's mean step-aware score on the toy: 6.1 → 13.3
TRUE = [0.10, 0.20, 0.30, 0.35, 0.33, 0.31, 0.28, 0.25, 0.20, 0.15]  # peaks at step 30


def _quiet(watch: RewardHackingWatch, steps, proxy, true) -> list:
    """Feed every point with warnings turned into errors: nothing may warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return [watch.update(s, p, t) for s, p, t in zip(steps, proxy, true)]


@pytest.mark.parametrize("patience, fires_at", [(1, 60), (2, 70), (4, 90)])
def test_a_rising_proxy_over_a_falling_true_reward_fires_at_the_right_step(patience, fires_at):
    # falls from 0.35: 0.02 (step 40), 0.04 (50), 0.07 (60) is the first beyond 0.05
    watch = RewardHackingWatch(tolerance=0.05, patience=patience, stop=True,
                               proxy_name="mean step-aware score", true_name="toy reward")
    events = {}
    for step, proxy, true in zip(STEPS, PROXY, TRUE):
        if step < fires_at:
            assert _quiet(watch, [step], [proxy], [true]) == [None] and not watch.should_stop
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                events[step] = watch.update(step, torch.tensor(proxy), torch.tensor(true))  # 0-d tensors work too
            assert [w.category for w in caught] == ([RewardHackingWarning] if step == fires_at else [])
    assert [s for s, e in events.items() if e is not None] == [fires_at]  # once per episode
    event = events[fires_at]
    assert (event.step, event.peak_step, event.peak_true, event.evaluations) == (fires_at, 30, 0.35, patience)
    assert event.proxy_at_peak == pytest.approx(PROXY[3]) and event.proxy == pytest.approx(PROXY[fires_at // 10])
    assert "mean step-aware score" in event.message and "toy reward" in event.message
    assert f"step {fires_at}" in event.message and "peak 0.35 at step 30" in event.message
    assert watch.should_stop and watch.diverged and watch.events == [event]
    json.dumps(watch.summary())


def test_without_stop_it_reports_and_warns_but_does_not_ask_to_stop():
    watch = RewardHackingWatch(tolerance=0.05)
    with pytest.warns(RewardHackingWarning, match="step 60"):
        [watch.update(s, p, t) for s, p, t in zip(STEPS, PROXY, TRUE)]
    assert watch.diverged and not watch.should_stop
    silent = RewardHackingWatch(tolerance=0.05, warn=False, stop=True)
    assert [e.step for e in _quiet(silent, STEPS, PROXY, TRUE) if e] == [60] and silent.should_stop


def test_both_rising_never_fires():
    watch = RewardHackingWatch(tolerance=0.0, stop=True)
    true = [0.1 + 0.03 * k for k in range(10)]
    assert _quiet(watch, STEPS, PROXY, true) == [None] * 10 and not watch.should_stop


def test_noise_below_the_tolerance_never_fires():
    rng = random.Random(0)
    steps = list(range(0, 2000, 10))
    proxy = [6.0 + 0.01 * k for k in range(len(steps))]
    true = [0.5 + rng.uniform(-0.02, 0.02) for _ in steps]  # flat, wobbling by at most 0.04 peak to trough
    watch = RewardHackingWatch(tolerance=0.05, stop=True)
    assert _quiet(watch, steps, proxy, true) == [None] * len(steps) and not watch.should_stop
    # the same noise does cross a tolerance below it: the test above is not vacuous
    tight = RewardHackingWatch(tolerance=0.01, warn=False)
    assert any(_quiet(tight, steps, proxy, true))


def test_a_falling_proxy_with_a_falling_true_reward_is_not_hacking():
    watch = RewardHackingWatch(tolerance=0.05, stop=True)
    proxy = PROXY[:4] + [PROXY[3] - 0.5 * k for k in range(1, 7)]
    assert _quiet(watch, STEPS, proxy, TRUE) == [None] * 10


def test_patience_counts_divergent_evaluations_in_a_row_and_a_new_episode_fires_again():
    watch = RewardHackingWatch(tolerance=0.05, patience=2, warn=False)
    true = [0.3, 0.5, 0.4, 0.48, 0.4, 0.38, 0.38, 0.7, 0.6, 0.6, 0.6]  # 0.48: within tolerance, the count restarts
    proxy = [1.0 + k for k in range(len(true))]
    events = _quiet(watch, range(len(true)), proxy, true)
    assert [e.step for e in events if e] == [5, 9]  # steps 4–5, then 8–9 after a new peak at step 7
    assert events[9].peak_step == 7 and events[9].peak_true == 0.7


def test_a_resumed_watch_goes_on_as_if_never_interrupted():
    whole = RewardHackingWatch(tolerance=0.05, patience=2, warn=False)
    _quiet(whole, STEPS, PROXY, TRUE)
    first = RewardHackingWatch(tolerance=0.05, patience=2, warn=False)
    _quiet(first, STEPS[:7], PROXY[:7], TRUE[:7])  # step 60: one divergent evaluation counted, not yet fired
    second = RewardHackingWatch(tolerance=0.05, patience=2, warn=False)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert first.in_a_row == 1 and not first.events
    _quiet(second, STEPS[7:], PROXY[7:], TRUE[7:])
    assert second.summary() == whole.summary() and [e.step for e in second.events] == [70]


def test_bad_input_is_refused():
    watch = RewardHackingWatch()
    watch.update(10, 1.0, 1.0)
    with pytest.raises(ValueError, match="increase"):
        watch.update(10, 2.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        watch.update(20, float("nan"), 1.0)
    with pytest.raises(ValueError, match="≥ 0"):
        RewardHackingWatch(tolerance=-0.1)
    with pytest.raises(ValueError, match="patience"):
        RewardHackingWatch(patience=0)
