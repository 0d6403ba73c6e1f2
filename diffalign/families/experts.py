"""Two denoisers that split the noise levels between them, as one module: Wan 2.2 A14B's
high-noise expert (the pipeline's ``transformer``, for timesteps ``≥ boundary_ratio·N``) and
low-noise expert (``transformer_2``, below), routed as ``WanPipeline.__call__`` routes them.

The rest of diffalign sees one denoiser (``family.denoiser``): LoRA adapters go into the trained
experts only, the reference and snapshots work on the pair as on any module, the sampler's and
the training forward's samples each reach the expert of their own time, and the untrained
expert's weights stay bit-identical (they get no adapter and no gradient).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

EXPERTS = {"high_noise": "transformer", "low_noise": "transformer_2"}
"""Each expert's name in configs (``model.experts``) → its pipeline component."""


class ExpertPair(nn.Module):
    """``high`` for timesteps ``≥ boundary``, ``low`` below; ``trained`` names the experts a run
    trains (adapters, gradients, saved weights).

    Args:
        high, low: the two ``WanTransformer3DModel``.
        boundary: ``boundary_ratio · num_train_timesteps``, in the denoiser's timestep units.
        trained: a subset of :data:`EXPERTS`' keys.
    """

    def __init__(self, high: nn.Module, low: nn.Module, boundary: float, trained=tuple(EXPERTS)):
        super().__init__()
        self.high, self.low, self.boundary = high, low, float(boundary)
        self.trained = tuple(trained)
        self._repeated_blocks = getattr(high, "_repeated_blocks", None)

    @property
    def config(self):
        """The high-noise expert's config (both experts share the architecture)."""
        return self.high.config

    def experts(self) -> dict[str, nn.Module]:
        """The trained experts by pipeline component (``transformer``, ``transformer_2``)."""
        modules = {"high_noise": self.high, "low_noise": self.low}
        return {EXPERTS[name]: modules[name] for name in self.trained}

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, **kwargs):
        """Each sample through the expert of its timestep (``timestep [N]``); diffusers' tuple out."""
        high = timestep >= self.boundary
        if high.all():
            return self.high(hidden_states=hidden_states, timestep=timestep, **kwargs)
        if not high.any():
            return self.low(hidden_states=hidden_states, timestep=timestep, **kwargs)
        out = None
        for mask, expert in ((high, self.high), (~high, self.low)):
            part = expert(hidden_states=hidden_states[mask], timestep=timestep[mask],
                          **{k: v[mask] if torch.is_tensor(v) and v.shape[:1] == mask.shape else v
                             for k, v in kwargs.items()})[0]
            if out is None:
                out = part.new_empty((len(mask), *part.shape[1:]))
            out[mask] = part
        return (out,)

    # ----------------------------------------------------------------------------- what training calls
    def add_adapter(self, config) -> None:
        """peft adapters on the trained experts only."""
        for expert in self.experts().values():
            expert.add_adapter(config)

    @property
    def peft_config(self) -> dict:
        return next(iter(self.experts().values())).peft_config

    def enable_gradient_checkpointing(self) -> None:
        for expert in self.experts().values():
            expert.enable_gradient_checkpointing()

    def requires_grad_(self, requires_grad: bool = True):
        """Gradients for the trained experts only: the other one stays as it was loaded."""
        for name, expert in (("high_noise", self.high), ("low_noise", self.low)):
            expert.requires_grad_(requires_grad and name in self.trained)
        return self

    def save_pretrained(self, folder, **kwargs) -> Path:
        """Each trained expert in the pipeline's layout: ``folder`` is the ``transformer`` folder,
        ``transformer_2`` its sibling. Returns where the weights are: the one trained expert's
        folder, or the parent of both (a low-noise-only run writes no ``transformer``)."""
        folder = Path(folder)
        written = [folder.parent / component for component in self.experts()]
        for path, expert in zip(written, self.experts().values()):
            expert.save_pretrained(str(path), **kwargs)
        return written[0] if len(written) == 1 else folder.parent
