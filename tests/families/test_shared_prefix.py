"""The policy reuses what its LoRA-disabled reference computed alike (diffalign.families.shared_prefix):
fewer calls, and nothing reused that depends on the adapters (the trainer's equality:
tests/training/test_shared_prefix_training.py)."""

import torch
from torch import nn

from diffalign.families.shared_prefix import SharedPrefix, frozen_roots


class _Net(nn.Module):
    """stem → head → body (frozen, inputs adapter-free) → + lora (the adapter) → tail (frozen, after it)."""

    def __init__(self):
        super().__init__()
        self.stem, self.head, self.tail = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
        self.body = nn.Linear(3, 3)
        self.lora = nn.Parameter(torch.zeros(3))
        self.adapter_on = True
        for layer in (self.stem, self.head, self.tail, self.body):
            layer.requires_grad_(False)

    def forward(self, x):
        h = self.head(self.stem(x).relu())
        h = self.body(h) + (self.lora if self.adapter_on else 0)
        return self.tail(h)


def _counting(module, counts, name):
    forward = module.forward

    def counted(*a, **k):
        counts[name] = counts.get(name, 0) + 1
        return forward(*a, **k)

    module.forward = counted


def test_the_frozen_roots_are_the_largest_frozen_submodules():
    net = _Net()
    assert [name for name, _ in frozen_roots(net)] == ["stem", "head", "tail", "body"]
    net.stem._compiled_call_impl = object()  # what nn.Module.compile sets: a compiled subtree is the compiler's
    assert [name for name, _ in frozen_roots(net)] == ["head", "tail", "body"]


def test_the_policy_reuses_only_the_adapter_free_calls():
    net, counts = _Net(), {}
    for name in ("stem", "head", "tail", "body"):
        _counting(getattr(net, name), counts, name)
    prefix = SharedPrefix(net)
    x = torch.randn(2, 3)

    def step():
        with prefix.pair():
            with prefix.reference(), torch.no_grad():
                net.adapter_on = False
                ref = net(x)
                net.adapter_on = True
            return ref, net(x)

    step()  # plans: every call runs twice
    assert counts == {"stem": 2, "head": 2, "body": 2, "tail": 2}
    assert prefix.plan == {("stem", 0), ("head", 0), ("body", 0)}
    with torch.no_grad():
        net.lora.add_(1.0)  # the policy now differs from the reference after the adapter
    counts.clear()
    ref, pol = step()
    assert counts == {"stem": 1, "head": 1, "body": 1, "tail": 2}
    assert prefix.calls_reused == 3
    with torch.no_grad():
        h = net.head(net.stem(x).relu())
        torch.testing.assert_close(ref, net.tail(net.body(h)), rtol=0, atol=0)
        torch.testing.assert_close(pol, net.tail(net.body(h) + net.lora), rtol=0, atol=0)
    pol.sum().backward()
    assert torch.equal(net.lora.grad, net.tail.weight.sum(0) * 2)  # d/dlora Σ tail(a + lora), 2 rows


def test_a_no_grad_pair_does_not_plan():
    net = _Net()
    prefix = SharedPrefix(net)
    with torch.no_grad(), prefix.pair():
        with prefix.reference():
            net(torch.randn(1, 3))
        net(torch.randn(1, 3))
    assert prefix.plan is None


def test_the_tiny_unet_with_lora_reuses_its_prefix_bit_for_bit(tiny_path):
    """The tiny SD1.5 UNet, LoRA on the attention projections: from the second pair on the policy
    reuses ``conv_in``, the time embedding and the cross-attention's base key/value projections,
    and its output and gradients equal a forward that computes everything."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(tiny_path("sd15"), subfolder="unet").requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, p in unet.named_parameters():
        if "lora_B" in name:  # B = 0 at init would make the policy equal the reference everywhere
            p.data.normal_(generator=torch.Generator().manual_seed(len(name)))
    gen = torch.Generator().manual_seed(0)
    size = unet.config.sample_size
    x, t = torch.randn(2, 4, size, size, generator=gen), torch.tensor([10, 500])
    text = torch.randn(2, 7, unet.config.cross_attention_dim, generator=gen)
    lora = [p for p in unet.parameters() if p.requires_grad]

    def policy():
        out = unet(x, t, text).sample
        grads = torch.autograd.grad(out.square().sum(), lora)
        return out.detach(), grads

    want_out, want_grads = policy()
    prefix = SharedPrefix(unet)
    for _ in range(2):  # the first pair plans, the second reuses
        with prefix.pair():
            with prefix.reference(), torch.no_grad():
                unet.disable_adapters()
                unet(x, t, text)
                unet.enable_adapters()
            out, grads = policy()
    assert {"conv_in", "time_embedding"} <= {name for name, _ in prefix.plan}
    assert any(name.endswith("attn2.to_k.base_layer") for name, _ in prefix.plan)
    assert prefix.calls_reused == len(prefix.plan)
    assert torch.equal(out, want_out) and all(torch.equal(a, b) for a, b in zip(grads, want_grads))
