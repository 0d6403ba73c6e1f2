"""The plan of one collection (diffalign.steps.buffer): which images each micro-batch trains, at
which step, and where the updates begin; checked against counts written out by hand."""

import pytest
import torch

from diffalign.steps.buffer import keep_best_worst, plan_updates, trained_steps


def test_first_steps_are_the_same_for_every_image():
    steps = trained_steps(3, 10, 9, "first", torch.Generator().manual_seed(0))
    assert steps.tolist() == [list(range(9))] * 3  # ⌊0.99·10⌋ = 9: the last step never trains


def test_a_window_trains_its_own_steps():
    assert trained_steps(2, 3, 3, "first", torch.Generator(), first=4).tolist() == [[4, 5, 6]] * 2


def test_random_steps_are_a_rising_subset_per_image():
    steps = trained_steps(50, 10, 6, "random", torch.Generator().manual_seed(0))
    assert steps.shape == (50, 6)
    assert (steps[:, 1:] > steps[:, :-1]).all() and steps.min() >= 0 and steps.max() <= 9
    assert len({tuple(row) for row in steps.tolist()}) > 1  # each image draws its own


def test_every_kept_image_trains_once_per_step_and_dropped_ones_never():
    """N = 8 images, 2 dropped (zero advantage), micro-batches of 3: ⌈8/3⌉ = 3 image micro-batches
    × 2 steps = 6 micro-batches, split into 2 updates of 3."""
    kept = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool)
    updates = plan_updates(kept, positions=2, micro_batch=3, updates=2, inner_epochs=1,
                           generator=torch.Generator().manual_seed(0))
    assert [len(u) for u in updates] == [3, 3]
    seen = sorted((int(i), m.position) for u in updates for m in u for i in m.images)
    assert seen == sorted((i, p) for i in (0, 1, 3, 4, 5, 7) for p in (0, 1))
    assert all(m.weight == 1.0 for u in updates for m in u)
    # the 6 kept images dealt over 3 micro-batches: 2 each
    assert sorted(len(m.images) for u in updates for m in u) == [2] * 6


def test_too_few_kept_images_pad_with_weight_zero():
    """One kept image for 2 image micro-batches: the second is a weight-0 stand-in, so this
    process runs as many backwards as one that kept them all."""
    kept = torch.tensor([0, 0, 1, 0], dtype=torch.bool)
    updates = plan_updates(kept, positions=1, micro_batch=2, updates=1, inner_epochs=1,
                           generator=torch.Generator().manual_seed(0))
    (update,) = updates
    assert len(update) == 2
    assert sorted(m.weight for m in update) == [0.0, 1.0]
    assert [int(i) for m in update if m.weight for i in m.images] == [2]


def test_inner_epochs_shuffle_again_and_count_twice():
    kept = torch.ones(6, dtype=torch.bool)
    updates = plan_updates(kept, positions=1, micro_batch=6, updates=2, inner_epochs=2,
                           generator=torch.Generator().manual_seed(0))
    assert [len(u) for u in updates] == [1, 1]
    first, second = (u[0].images.tolist() for u in updates)
    assert sorted(first) == sorted(second) == list(range(6))


def test_more_updates_than_micro_batches_is_refused():
    with pytest.raises(ValueError, match="3 updates per collection, but a collection has 2 micro-batches"):
        plan_updates(torch.ones(4, dtype=torch.bool), 1, 2, 3, 1, torch.Generator())


def test_best_and_worst_of_each_group():
    rewards = torch.tensor([[0.1, 0.9, 0.5, 0.3], [4.0, 1.0, 3.0, 2.0]])
    assert keep_best_worst(rewards, 1).tolist() == [[True, True, False, False], [True, True, False, False]]
