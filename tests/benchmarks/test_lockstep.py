"""Lock-step timing (diffalign.benchmarks.lockstep): two runs take turns step by step, their waits
untimed, and neither waits for a run that has ended."""

import threading
import time
from types import SimpleNamespace

from diffalign.benchmarks.lockstep import Turns, timed_step
from diffalign.benchmarks.measure import StepTimer
from stand_in_peer import FAKE_PEER


def _train(turns, name, steps, step_s, log, lock):
    for k in range(steps):
        start = time.perf_counter()
        time.sleep(step_s)
        with lock:
            log.append((name, k + 1, start, time.perf_counter()))
        turns.after_step()
    turns.close()


def _pair(leader_steps: int, follower_steps: int, step_s: float) -> list[tuple]:
    """Leader here, follower in a thread; returns ``(name, step, start, end)`` of every step."""
    leader, (read_fd, write_fd) = Turns.pair()
    follower = Turns(read_fd, write_fd, leader=False)
    log, lock = [], threading.Lock()
    other = threading.Thread(target=_train, args=(follower, "F", follower_steps, step_s, log, lock))
    other.start()
    _train(leader, "L", leader_steps, step_s, log, lock)
    other.join(timeout=10)
    assert not other.is_alive()
    return log


def test_after_the_first_step_the_two_runs_alternate_and_never_overlap():
    log = _pair(5, 5, 0.02)
    later = sorted((e for e in log if e[1] > 1), key=lambda e: e[2])
    assert [(name, k) for name, k, *_ in later] == [("L", 2), ("F", 2), ("L", 3), ("F", 3), ("L", 4), ("F", 4),
                                                    ("L", 5), ("F", 5)]
    assert all(a[3] <= b[2] for a, b in zip(later, later[1:]))  # one ends before the next starts


def test_a_run_that_ends_first_leaves_the_other_running_alone():
    assert sum(1 for e in _pair(2, 6, 0.001) if e[0] == "F") == 6


def test_the_peer_child_takes_turns_and_its_waits_are_not_timed(tmp_path):
    """The peer runs in a child process, timed by its optimiser steps (warm-up dropped) with the
    memory it adds measured there. The stand-in peer's steps take milliseconds; ours take 0.3 s
    each: in lock-step the child waits 0.3 s for every turn, and none of that shows in its step
    times."""
    from diffalign.benchmarks.peer import start_peer

    script = tmp_path / "train_diffusion_dpo_sdxl.py"
    script.write_text(FAKE_PEER)
    args = SimpleNamespace(peer_script=script, warmup=1, device="cpu", mode="lora", resolution=32, batch_size=1,
                           lora_rank=4, lr=1e-5, mixed_precision="no", workers=None)
    turns, other_side = Turns.pair()
    peer = start_peer(args, "model", tmp_path / "pairs", "peak", steps=5, turns=other_side)
    turns.close_other_side()
    timer = StepTimer("cpu", warmup=1)
    timer.tick()
    for _ in range(5):
        time.sleep(0.3)
        timed_step(timer, turns)
    turns.close()
    result = peer.result()
    assert len(result["step_times_s"]) == 4 and max(result["step_times_s"]) < 0.2
    assert result["peak_bytes"] >= 5 * 4 * 2**20  # five 4-MiB tensors held at the end
    assert len(timer.times) == 4 and min(timer.times) >= 0.3  # ours: the sleep, not the child's steps
