"""Lean layers: PyTorch's gradients, keeping less for backward."""

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from diffusers.models.activations import GEGLU

from diffalign.training.lean_layers import LeanConv2d, LeanGroupNorm, lean_layers

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def _saved_storages(fn):
    """Run ``fn`` and return the data pointers of every tensor autograd saved for backward."""
    saved = set()

    def pack(t):
        saved.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


CONVS = [
    (nn.Conv1d(4, 6, 3, padding=1), (2, 4, 9)),
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 9, 7)),
    (nn.Conv2d(4, 8, 3, padding=2, dilation=2, groups=2), (2, 4, 8, 8)),
    (nn.Conv2d(4, 6, 1, bias=False), (3, 4, 5, 5)),
    (nn.Conv3d(2, 3, (1, 3, 3), padding=(0, 1, 1)), (1, 2, 3, 6, 6)),
]


@pytest.mark.parametrize("conv, shape", CONVS, ids=["conv1d", "conv2d-stride", "conv2d-dilation-groups", "conv2d-1x1-no-bias", "conv3d"])
def test_frozen_conv_gradients_match_pytorch_and_input_is_not_saved(conv, shape):
    torch.manual_seed(0)
    conv.requires_grad_(False)
    lean = copy.deepcopy(conv)
    assert lean_layers(lean) == 1
    x = torch.randn(shape)
    upstream = torch.randn_like(conv(x))

    def grads(module):
        # The input is made inside, as an activation is: its own storage, saved or not.
        leaf = x.clone().requires_grad_(True)
        h = leaf * 1.5
        out, saved = _saved_storages(lambda: module(h))
        (out * upstream).sum().backward()
        return out, leaf.grad, h.untyped_storage().data_ptr() in saved

    out_ref, grad_ref, saved_ref = grads(conv)
    out_lean, grad_lean, saved_lean = grads(lean)
    assert torch.equal(out_lean, out_ref)
    assert torch.equal(grad_lean, grad_ref)  # the same kernel on the same gradient
    assert saved_ref, "PyTorch's own convolution keeps its input (what the lean one saves)"
    assert not saved_lean


def test_trainable_conv_takes_pytorch_path_and_gets_weight_gradients():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    lean = copy.deepcopy(conv)
    lean_layers(lean)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    conv(x).square().sum().backward()
    ref_w, ref_b = conv.weight.grad.clone(), conv.bias.grad.clone()
    x.grad = None
    out, saved = _saved_storages(lambda: lean(x))
    out.square().sum().backward()
    assert x.untyped_storage().data_ptr() in saved  # the weight's gradient needs the input
    torch.testing.assert_close(lean.weight.grad, ref_w)
    torch.testing.assert_close(lean.bias.grad, ref_b)


def test_frozen_conv_under_autocast_matches_pytorch():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 4, 3, padding=1).requires_grad_(False)
    lean = copy.deepcopy(conv)
    lean_layers(lean)
    x = torch.randn(2, 4, 6, 6)
    grads = []
    for module in (conv, lean):
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(leaf * 1.0)
        assert out.dtype == torch.bfloat16
        out.float().sum().backward()
        grads.append(leaf.grad)
    assert grads[1].dtype == torch.float32
    torch.testing.assert_close(grads[1], grads[0])


def test_swap_keeps_parameters_and_leaves_other_modules_alone():
    class MyConv(nn.Conv2d):
        pass

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), MyConv(4, 4, 1), nn.Sequential(nn.Conv1d(2, 2, 1)),
                          nn.SiLU())
    keys = list(model.state_dict())
    assert lean_layers(model) == 3
    assert type(model[0]) is LeanConv2d and isinstance(model[0], nn.Conv2d)
    assert type(model[1]) is LeanGroupNorm and isinstance(model[1], nn.GroupNorm)
    assert type(model[2]) is MyConv and type(model[4]) is nn.SiLU
    assert list(model.state_dict()) == keys


def test_no_grad_pass_is_unchanged():
    conv = nn.Conv2d(3, 4, 3).requires_grad_(False)
    lean = copy.deepcopy(conv)
    lean_layers(lean)
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(lean(x), conv(x))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_trainer_with_lean_layers_trains_the_same_and_saves_less(checkpointing, tiny_path, pair_data, tmp_path):
    """The tiny SDXL under LoRA: the switch changes what backward keeps, not the step (with and
    without gradient checkpointing, which recomputes the lean layers in backward)."""
    from diffalign.config import load_config
    from diffalign.training import Trainer

    runs = {}
    for lean in (False, True):
        config = load_config(CONFIGS / "tiny" / "diffusion_dpo.yaml",
                             [f"model.path={tiny_path('sdxl')}", f"data.path={pair_data}",
                              f"output_dir={tmp_path / str(lean)}", f"lean_layers={str(lean).lower()}",
                              f"gradient_checkpointing={str(checkpointing).lower()}"])
        trainer = Trainer(config)
        modules = list(trainer.family.denoiser.modules())
        convs = [m for m in modules if isinstance(m, nn.Conv2d)]
        assert convs and all((type(m) is LeanConv2d) == lean for m in convs)
        geglus = [m for m in modules if isinstance(m, GEGLU)]
        assert geglus and all((type(m) is not GEGLU) == lean for m in geglus)
        batch = next(iter(trainer.loader))
        saved = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = trainer.compute_loss(batch).loss
        loss.backward()
        runs[lean] = (loss.item(), [p.grad.clone() for p in trainer.trainable], sum(saved.values()))
    (loss_off, grads_off, saved_off), (loss_on, grads_on, saved_on) = runs[False], runs[True]
    assert loss_on == loss_off  # the forward is the same kernels
    for a, b in zip(grads_off, grads_on, strict=True):
        # The norms remake x̂ from their output: equal to rounding (the convolutions and GEGLU: exactly),
        # on the scale of the tensor: an element near 0 can differ by 3e-4 of itself. The largest
        # difference was 1.5e-5 of the tensor's largest gradient (1 and 2 threads, oneDNN off, ATen
        # without AVX2); 1e-4 leaves a margin of 6.
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * float(a.abs().max()))
    if not checkpointing:  # checkpointed blocks keep only their inputs either way
        assert saved_on < 0.9 * saved_off


def test_geglu_gradients_match_diffusers_and_gelu_is_not_saved():
    torch.manual_seed(0)
    geglu = GEGLU(6, 5)
    lean = copy.deepcopy(geglu)
    assert lean_layers(lean) == 1 and type(lean) is not GEGLU and isinstance(lean, GEGLU)
    x = torch.randn(2, 7, 6)
    upstream = torch.randn(2, 7, 5)

    def run(module):
        module.zero_grad()
        leaf = x.clone().requires_grad_(True)
        h = leaf * 2.0
        out, saved = _saved_storages(lambda: module(h))
        (out * upstream).sum().backward()
        return out, leaf.grad, [p.grad.clone() for p in module.parameters()], saved

    out_ref, gx_ref, gp_ref, saved_ref = run(geglu)
    out_lean, gx_lean, gp_lean, saved_lean = run(lean)
    assert torch.equal(out_lean, out_ref)
    assert torch.equal(gx_lean, gx_ref)
    for a, b in zip(gp_ref, gp_lean, strict=True):
        assert torch.equal(b, a)
    # diffusers' GEGLU keeps one more activation (gelu(gate)) than the lean one.
    params = {p.untyped_storage().data_ptr() for p in geglu.parameters()} | {p.untyped_storage().data_ptr() for p in lean.parameters()}
    assert len(saved_ref - params) == len(saved_lean - params) + 1


@pytest.mark.parametrize("needs", ["h", "g"])
def test_gated_gelu_gradient_by_hand(needs):
    """d/dh [h·gelu(g)] = gelu(g) and d/dg = h·(Φ(g) + g·φ(g)), checked at hand-picked points."""
    from diffalign.training.lean_layers import _GatedGeluFunction

    h = torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64, requires_grad=needs == "h")
    g = torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64, requires_grad=needs == "g")
    _GatedGeluFunction.apply(h, g).sum().backward()
    normal = torch.distributions.Normal(0.0, 1.0)
    cdf, pdf = normal.cdf(g.detach()), normal.log_prob(g.detach()).exp()
    if needs == "h":
        # gelu(0) = 0, gelu(1) = Φ(1) = 0.8413..., gelu(-1) = -Φ(-1) = -0.1587...
        torch.testing.assert_close(h.grad, torch.tensor([0.0, 0.841344746, -0.158655254], dtype=torch.float64))
    else:
        torch.testing.assert_close(g.grad, h.detach() * (cdf + g.detach() * pdf))
        assert g.grad[0].item() == pytest.approx(0.75)  # h·Φ(0) = 1.5 · 0.5


def test_lean_model_pickles_by_name(tmp_path):
    """``torch.save`` of a whole model finds the lean classes by their module and name."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), GEGLU(4, 2))
    lean_layers(model)
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert [type(m).__name__ for m in loaded] == ["LeanConv2d", "LeanGEGLU"]
    x = torch.randn(1, 3, 4, 4)  # conv → [1, 4, 4, 4]; GEGLU acts on the last axis (4)
    assert torch.equal(loaded(x), model(x))


NORMS = [
    (nn.LayerNorm(16), (2, 5, 16)),
    (nn.GroupNorm(4, 8), (2, 8, 3, 5)),
    (nn.GroupNorm(2, 8), (2, 8, 2, 3, 5)),  # a video latent's 5-D activations
]


@pytest.mark.parametrize("norm, shape", NORMS, ids=["layer-norm", "group-norm", "group-norm-5d"])
def test_frozen_norm_gradients_match_pytorch_and_only_the_output_is_saved(norm, shape):
    """The SiLU after a ResNet's GroupNorm (or LoRA after a LayerNorm) keeps the norm's output
    anyway; the lean norm keeps that and not its input."""
    torch.manual_seed(0)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    norm.requires_grad_(False)
    lean = copy.deepcopy(norm)
    assert lean_layers(lean) == 1
    x = torch.randn(shape)
    upstream = torch.randn(shape)

    def grads(module):
        leaf = x.clone().requires_grad_(True)
        h = leaf * 1.5
        out, saved = _saved_storages(lambda: torch.nn.functional.silu(module(h)))
        (out * upstream).sum().backward()
        return out, leaf.grad, h.untyped_storage().data_ptr() in saved

    out_ref, grad_ref, saved_ref = grads(norm)
    out_lean, grad_lean, saved_lean = grads(lean)
    assert torch.equal(out_lean, out_ref)
    torch.testing.assert_close(grad_lean, grad_ref, rtol=1e-5, atol=1e-6)
    assert saved_ref and not saved_lean


def test_norm_gradient_by_hand():
    """LayerNorm (eps 0) of x = (0, 2) with γ = 2, β = 1: mean 1, rstd 1, x̂ = (−1, 1), y = (−1, 3).
    Upstream (1, −1): ĝ = (2, −2), mean ĝ = 0, mean(ĝ·x̂) = −2, so
    dx = rstd·(ĝ − mean ĝ − x̂·mean(ĝ·x̂)) = (2 − 0 − 2, −2 − 0 + 2) = (0, 0) (two values always
    normalise to ±1). Then x = (1, 2, 3), γ = 1, upstream (1, 0, 0): rstd = √1.5,
    x̂ = (−1, 0, 1)·√1.5, mean ĝ = ⅓, mean(ĝ·x̂) = −√1.5/3."""
    norm = nn.LayerNorm(2, eps=0.0).requires_grad_(False)
    with torch.no_grad():
        norm.weight.fill_(2.0)
        norm.bias.fill_(1.0)
    lean_layers(nn.Sequential(norm))
    x = torch.tensor([[0.0, 2.0]], requires_grad=True)
    y = norm(x * 1.0)
    assert torch.equal(y, torch.tensor([[-1.0, 3.0]]))
    (g,) = torch.autograd.grad(y, x, torch.tensor([[1.0, -1.0]]))
    torch.testing.assert_close(g, torch.zeros(1, 2), atol=1e-7, rtol=0)
    norm3 = nn.LayerNorm(3, eps=0.0).requires_grad_(False)
    lean_layers(nn.Sequential(norm3))
    x3 = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    (g3,) = torch.autograd.grad(norm3(x3 * 1.0), x3, torch.tensor([[1.0, 0.0, 0.0]]))
    r = 1.5 ** 0.5
    expected = torch.tensor([[r * (1 - 1 / 3 - 1.5 / 3), r * (0 - 1 / 3), r * (0 - 1 / 3 + 1.5 / 3)]])
    torch.testing.assert_close(g3, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["trainable", "zero-gamma", "autocast"])
def test_norms_that_cannot_remake_their_input_take_pytorchs_path(case):
    """A trainable norm needs x̂ for γ's gradient anyway; γ = 0 cannot be divided by; under
    autocast the consumer keeps its own low-precision copy, so saving the output saves nothing."""
    norm = nn.GroupNorm(2, 4)
    if case != "trainable":
        norm.requires_grad_(False)
    if case == "zero-gamma":
        with torch.no_grad():
            norm.weight[1] = 0.0
    lean_layers(nn.Sequential(norm))
    leaf = torch.randn(2, 4, 3, 3, requires_grad=True)
    h = leaf * 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case == "autocast"):
        _, saved = _saved_storages(lambda: norm(h))
    assert h.untyped_storage().data_ptr() in saved
