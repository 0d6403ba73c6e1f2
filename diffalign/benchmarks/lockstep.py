"""Lock-step timing: two training runs in two processes take turns, one optimiser step each.

On a shared machine the speed drifts by tens of percent over minutes (on the 2-core CPU the
peer's median step moved from 2.4 to 3.1 s between rounds of one benchmark), so two set-ups timed
one after the other can differ by more than the effect measured. Taking turns step by step puts
both runs in the same spell: each step of one is timed between two steps of the other, so a
slow spell slows both, and the ratio of their medians measures the code, not the minute.

Only one process computes at a time. After each optimiser step a run tells the other it has
finished that step and waits for its turn; the waiting is not timed (:meth:`StepTimer.resume`).
The *leader* may start step ``k + 1`` once the other has finished step ``k``; the other once the
leader has finished step ``k + 1``. Their first steps overlap (they are warm-up steps); from the
second on the steps alternate. A run that ends (or dies) closes its side: the other then no
longer waits.

Example (two processes; ``leader_turns`` in one, ``Turns(*fds, leader=False)`` in the other)::

    leader_turns, fds = Turns.pair()        # fds: the other side's (read, write) descriptors
    ...start the other process with pass_fds=fds...
    leader_turns.close_other_side()
    for each step: step(); timed_step(timer, leader_turns)
    leader_turns.close()
"""

from __future__ import annotations

import os


class Turns:
    """One side of a lock-step pair: ``read_fd`` hears the other's finished steps, ``write_fd``
    tells it ours (one byte per step)."""

    def __init__(self, read_fd: int, write_fd: int, leader: bool, other_side: tuple[int, int] | None = None):
        self.read_fd, self.write_fd, self.leader = read_fd, write_fd, leader
        self.done = 0  # our finished steps
        self.other_done = 0  # the other's, as heard so far
        self.other_ended = False
        self._other_side = other_side

    @classmethod
    def pair(cls) -> tuple[Turns, tuple[int, int]]:
        """The leader's side, and the ``(read_fd, write_fd)`` to hand the other process
        (``subprocess.Popen(pass_fds=...)``; then call :meth:`close_other_side` here)."""
        to_other_r, to_other_w = os.pipe()
        to_leader_r, to_leader_w = os.pipe()
        other = (to_other_r, to_leader_w)
        return cls(to_leader_r, to_other_w, leader=True, other_side=other), other

    def close_other_side(self) -> None:
        """Close this process's copies of the descriptors handed to the other process, so that
        its end (or death) reads here as the end of its steps."""
        for fd in self._other_side or ():
            os.close(fd)
        self._other_side = None

    def after_step(self) -> None:
        """Say our step is done, then wait until it is our turn again (or the other has ended)."""
        self.done += 1
        if self.write_fd >= 0:
            try:
                os.write(self.write_fd, b"s")
            except BrokenPipeError:  # the other run has ended: nobody waits for us
                self.other_ended = True
        needed = self.done if self.leader else self.done + 1
        while self.other_done < needed and not self.other_ended:
            heard = os.read(self.read_fd, 64)
            if not heard:
                self.other_ended = True
            self.other_done += len(heard)

    def close(self) -> None:
        """Our run has ended: the other stops waiting for our steps."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        if self.read_fd >= 0:
            os.close(self.read_fd)
            self.read_fd = -1
        self.other_ended = True


def timed_step(timer, turns: Turns | None) -> None:
    """End a step on ``timer`` (a :class:`~.measure.StepTimer`) and, in lock-step, wait for our
    next turn without counting the wait."""
    timer.tick()
    if turns is not None:
        turns.after_step()
        timer.resume()
