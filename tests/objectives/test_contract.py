"""The contract every registered objective keeps (docs/architecture.md, "Objective"), and build_objective."""

import ast
import math
from pathlib import Path

import pytest
import torch

import diffalign.objectives as objectives
from diffalign.objectives import (METRIC_NAMES, OBJECTIVES, DiffusionDPO, Objective, ObjectiveDataError,
                                  PreferenceTerms, build_objective, objective_config_dataclass)

B = 4
TERMS_GROUP_SIZE = {"spo": 2, "diffusion_dro": 2}
"""The K of the terms of the sampling objectives, which is not the dataset's (SPO: pairs made from
a prompt; Diffusion-DRO: one expert image and one rollout state per prompt)."""


def group_size(cls) -> int:
    return cls.min_group_size  # 2 for pairwise objectives, 3+ for ranked ones


def make_terms(cls, seed=0, with_ref=True, k=None):
    """float64 errors near 0.1 with small gaps, so every margin stays moderate and differences are visible;
    descending scores (best first, 1 apart) for objectives that need scores."""
    gen = torch.Generator().manual_seed(seed)
    k = k or TERMS_GROUP_SIZE.get(cls.name) or max(group_size(cls), 4 if cls.max_group_size is None and cls.needs_ranks else 0)
    policy = (0.1 + 1e-4 * torch.randn(B, k, generator=gen, dtype=torch.float64)).requires_grad_()
    ref = (policy.detach() + 1e-4 * torch.randn(B, k, generator=gen, dtype=torch.float64)).requires_grad_()
    ranks = torch.arange(k).expand(B, k)
    scores = (22.0 - torch.arange(k, dtype=torch.float64)).expand(B, k) if cls.needs_scores else None
    return policy, ref, _terms(cls, policy, ref if with_ref else None, t=torch.rand(B, generator=gen), ranks=ranks,
                               scores=scores)


def _terms(cls, policy, ref, **others) -> PreferenceTerms:
    """Terms with ``policy``/``ref`` in the per-image fields ``cls`` takes (errors, or SPO's log-probabilities)."""
    return PreferenceTerms(**{f"policy_{cls.per_image}": policy, f"ref_{cls.per_image}": ref}, **others)


ITEMS = sorted((name, cls) for name, cls in OBJECTIVES.items() if cls.min_group_size > 0)
"""The offline objectives, whose terms are per-image errors or step log-probabilities of pairs and
groups; the online ones (``min_group_size = 0``: ``grpo``, ``dance_grpo`` with advantages and recorded
log-probabilities, ``diffusion_nft`` with predicted clean samples) keep their own contracts in
``test_grpo.py`` and ``test_diffusion_nft.py``."""


@pytest.fixture(params=ITEMS, ids=[name for name, _ in ITEMS])
def entry(request):
    return request.param


def test_registry_is_consistent(entry):
    name, cls = entry
    assert issubclass(cls, Objective) and cls.name == name
    assert objective_config_dataclass(name) is cls.Config
    built = build_objective({"name": name})
    assert type(built) is cls and built.config == cls.Config()


def test_registry_holds_the_twelve_objectives():
    assert set(OBJECTIVES) == {"diffusion_dpo", "mapo", "dcpo", "rank_dpo", "sft", "inpo", "smpo", "spo",
                               "diffusion_dro", "grpo", "dance_grpo", "diffusion_nft"}
    assert {name for name, cls in OBJECTIVES.items() if cls.step == "online"} == {"grpo", "dance_grpo"}
    assert {name for name, cls in OBJECTIVES.items() if cls.min_group_size == 0} == {"grpo", "dance_grpo",
                                                                                      "diffusion_nft"}


def test_finite_scalar_loss_and_detached_metrics(entry):
    _, cls = entry
    _, _, terms = make_terms(cls)
    out = cls().loss(terms)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.loss.requires_grad
    assert "loss" in out.metrics and set(out.metrics) <= set(METRIC_NAMES)
    for key, value in out.metrics.items():
        assert isinstance(value, torch.Tensor) and value.ndim == 0, key
        assert not value.requires_grad and value.grad_fn is None, key
        assert math.isfinite(value.item()), key
    assert out.metrics["loss"].item() == out.loss.item()


def test_gradient_reaches_the_policy_only(entry):
    _, cls = entry
    policy, ref, terms = make_terms(cls)
    cls().loss(terms).loss.backward()
    assert policy.grad is not None and policy.grad.abs().sum() > 0
    assert ref.grad is None or not ref.grad.any()


def test_loss_falls_when_the_preferred_error_falls(entry):
    _, cls = entry
    policy, ref, terms = make_terms(cls, seed=1)
    better = policy.detach().clone()
    better[:, 0] += 1e-4 if cls.per_image == "logp" else -1e-4  # a likelier step, or a smaller error
    obj = cls()
    before = obj.loss(terms).loss.item()
    after = obj.loss(_terms(cls, better, ref, ranks=terms.ranks, scores=terms.scores)).loss.item()
    assert after < before


def test_reference_use_matches_the_declaration(entry):
    _, cls = entry
    _, _, terms = make_terms(cls, seed=2)
    _, _, without = make_terms(cls, seed=2, with_ref=False)
    if cls.needs_reference:
        with pytest.raises(ValueError, match=f"ref_{cls.per_image}"):
            cls().loss(without)
    else:
        assert cls().loss(terms).loss.item() == cls().loss(without).loss.item()


def test_check_data_rejects_a_wrong_group_size_by_name(entry):
    _, cls = entry
    cls.check_data(group_size=group_size(cls), has_captions=True, has_ranks=True, has_scores=True)
    bad = cls.max_group_size + 2 if cls.max_group_size is not None else cls.min_group_size - 1
    with pytest.raises(ObjectiveDataError, match=cls.name):
        cls.check_data(group_size=bad, has_captions=True, has_ranks=True)


@pytest.mark.parametrize("name, kwargs, pattern", [
    ("rank_dpo", {"group_size": 2, "has_captions": True, "has_ranks": True}, "rank_dpo needs K ≥ 3"),
    ("diffusion_dpo", {"group_size": 4, "has_captions": False, "has_ranks": True}, "diffusion_dpo needs K = 2"),
    ("dcpo", {"group_size": 2, "has_captions": False, "has_ranks": False}, "dcpo needs a caption"),
    ("mapo", {"group_size": 3, "has_captions": False, "has_ranks": True}, "mapo needs K = 2"),
])
def test_named_data_mismatches(name, kwargs, pattern):
    with pytest.raises(ObjectiveDataError, match=pattern):
        OBJECTIVES[name].check_data(**kwargs)


def test_half_precision_inputs_give_a_float32_loss(entry):
    _, cls = entry
    policy, ref, terms = make_terms(cls)
    half = _terms(cls, policy.detach().bfloat16().requires_grad_(), ref.detach().bfloat16(), ranks=terms.ranks,
                  scores=terms.scores)
    out = cls().loss(half)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_objective_modules_import_only_torch_and_the_package():
    allowed = {"__future__", "dataclasses", "typing", "math", "torch", "difflib"}
    folder = Path(objectives.__file__).parent
    for path in folder.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {node.module.split(".")[0]}
            elif isinstance(node, ast.ImportFrom) and node.level >= 2:  # the package: its leaves only
                assert node.module in ("typed_config", "errors"), f"{path.name} imports diffalign.{node.module}"
                continue
            else:
                continue
            assert roots <= allowed, f"{path.name} imports {roots - allowed}"


# ------------------------------------------------------------------------------ build_objective
def test_build_objective_sets_parameters():
    obj = build_objective({"name": "diffusion_dpo", "beta": 2500})
    assert isinstance(obj, DiffusionDPO) and obj.config.beta == 2500.0
    assert build_objective({"name": "mapo", "beta_mapo": 0.2, "snr_value": 1}).config.snr_value == 1.0
    assert build_objective({"name": "dcpo"}).config.beta == 500.0
    assert build_objective({"name": "rank_dpo", "minmax_scores": False}).config.minmax_scores is False


def test_build_objective_does_not_change_the_spec():
    spec = {"name": "diffusion_dpo", "beta": 100.0}
    build_objective(spec)
    assert spec == {"name": "diffusion_dpo", "beta": 100.0}


def test_unknown_objective_names_the_known_ones():
    with pytest.raises(ValueError) as info:
        build_objective({"name": "diffusion-dpo"})
    message = str(info.value)
    assert "'diffusion-dpo'" in message and "did you mean 'diffusion_dpo'" in message
    for name in OBJECTIVES:
        assert name in message
    with pytest.raises(ValueError, match="known objectives"):
        objective_config_dataclass("ppo")
    with pytest.raises(ValueError, match="'name'"):
        build_objective({"beta": 1.0})


def test_unknown_key_names_the_key_and_what_is_accepted():
    with pytest.raises(ValueError) as info:
        build_objective({"name": "diffusion_dpo", "beta_dpo": 5000})
    message = str(info.value)
    assert "beta_dpo" in message and "unknown key" in message
    assert "accepts: beta (float" in message and "loss_type" in message


@pytest.mark.parametrize("spec, key", [
    ({"name": "diffusion_dpo", "beta": "large"}, "beta"),
    ({"name": "mapo", "snr_value": [0.5]}, "snr_value"),
    ({"name": "diffusion_dpo", "loss_type": "ipo"}, "loss_type"),
    ({"name": "rank_dpo", "beta": -5.0}, "beta"),
])
def test_mistyped_or_invalid_values_name_the_key(spec, key):
    with pytest.raises(ValueError, match=key) as info:
        build_objective(spec)
    assert spec["name"] in str(info.value)


LN2_AT_THE_REFERENCE = {"diffusion_dpo", "dcpo", "inpo", "smpo", "rank_dpo", "spo"}
"""The objectives whose loss is −log σ of a margin that vanishes at θ = reference."""
NOT_LN2 = {"mapo": "reference-free", "sft": "reference-free",
           "diffusion_dro": "a hinge: max(m, ·) with margin m, not a log-sigmoid"}


def test_the_loss_is_ln2_when_the_policy_is_the_reference(entry):
    """At θ = reference every margin is 0, so each pair's −log σ(0) = ln 2 and so is the mean (and
    RankDPO's normalised weighted sum); SmPO's smoothed label only scales the zero margin."""
    name, cls = entry
    if name not in LN2_AT_THE_REFERENCE:
        assert name in NOT_LN2, f"{name}: say whether its loss is ln 2 at the reference"
        return
    policy, _, _ = make_terms(cls)
    same = _terms(cls, policy, policy.detach().clone(), t=torch.rand(B), ranks=torch.arange(policy.shape[1]).expand_as(policy),
                  scores=(22.0 - torch.arange(policy.shape[1], dtype=torch.float64)).expand_as(policy) if cls.needs_scores else None)
    assert cls().loss(same).loss.item() == pytest.approx(math.log(2), abs=1e-12)


def test_the_gradient_matches_finite_differences(entry):
    """``torch.autograd.gradcheck`` in float64: the loss's analytic gradient with respect to the
    policy's per-image terms equals central finite differences (errors near 0.1 with 1e-4 gaps,
    away from SPO's clip and Diffusion-DRO's hinge)."""
    import dataclasses

    _, cls = entry
    policy, _, terms = make_terms(cls)
    field = f"policy_{cls.per_image}"

    def loss(values):
        return cls().loss(dataclasses.replace(terms, **{field: values})).loss

    assert torch.autograd.gradcheck(loss, (policy.detach().clone().requires_grad_(),), eps=1e-7, atol=1e-6, rtol=1e-4)
