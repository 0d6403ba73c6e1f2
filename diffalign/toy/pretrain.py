"""A tiny SD1.5-style base model pretrained on the toy world, on CPU, cached after the first run.

Two stages, both deterministic from the seed: a small VAE learns to reconstruct toy images
(its latent scaling factor is then set from the latents' standard deviation, as for SD), then a
small UNet learns ε-prediction on those latents, conditioned by a frozen tiny CLIP text encoder,
with 10 % of prompts dropped for classifier-free guidance. The result is an ordinary
``StableDiffusionPipeline`` folder, so every part of diffalign treats it like SD1.5.

The model of the default :class:`PretrainConfig` ships with the package (``base_model/``, 4 MB
of safetensors), so the first ``diffalign demo`` skips the ~6 minutes of pretraining on 2 cores.
It is what ``python -m diffalign.toy.pretrain --out diffalign/toy/base_model`` writes; any other
config is pretrained on first use and cached.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from diffalign.config import cache_root
from diffalign.toy.world import SIZE, sample_images


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    images: int = 4096
    vae_steps: int = 300
    unet_steps: int = 1200
    batch_size: int = 32
    lr: float = 1e-3
    cfg_dropout: float = 0.1

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


PACKAGED = Path(__file__).with_name("base_model")
"""The shipped toy base model, pretrained with the default :class:`PretrainConfig`."""


def base_model(config: PretrainConfig = PretrainConfig(), cache: Path | None = None, progress: bool = True) -> Path:
    """The pretrained toy pipeline folder: the shipped one for the default config, else the cached
    one, trained now if it is not cached yet."""
    shipped = PACKAGED / "pretrain.json"
    if shipped.is_file() and json.loads(shipped.read_text())["config"] == asdict(config):
        return PACKAGED
    folder = (cache or cache_root()) / "toy" / f"sd-{config.key()}"
    if (folder / "pretrain.json").exists():
        return folder
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pretrain(config, tmp, progress=progress)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # only a finished model is ever found in the cache
    return folder


def toy_components(seed: int) -> dict:
    """Untrained components of the toy pipeline (a VAE ×4 down, a two-level UNet)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from diffalign.testing import tiny_clip_text_encoder, tiny_clip_tokenizer

    torch.manual_seed(seed)
    # ×4 down (8×8×4 latents) and no attention in the VAE: small enough to train on 2 cores.
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=8, sample_size=SIZE, mid_block_add_attention=False,
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
    return dict(vae=vae, unet=unet, scheduler=scheduler, text_encoder=tiny_clip_text_encoder(seed=seed + 2),
                tokenizer=tiny_clip_tokenizer(), safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def _batches(n: int, batch: int, steps: int, generator: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, n, (batch,), generator=generator)


def _train_vae(vae, pixels, config: PretrainConfig, generator, progress: bool) -> float:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.lr)
    vae.train()
    for idx in tqdm(list(_batches(len(pixels), config.batch_size, config.vae_steps, generator)), desc="toy VAE",
                    disable=not progress):
        posterior = vae.encode(pixels[idx]).latent_dist
        recon = vae.decode(posterior.sample(generator)).sample
        loss = F.mse_loss(recon, pixels[idx]) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)])
    scale = float(1 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    return scale


def _train_unet(components, latents, prompts, config: PretrainConfig, generator, progress: bool) -> float:
    from diffusers import DDPMScheduler

    unet, scheduler = components["unet"], DDPMScheduler.from_config(components["scheduler"].config)
    tokenizer, encoder = components["tokenizer"], components["text_encoder"]
    unique = sorted(set(prompts)) + [""]
    with torch.no_grad():
        ids = tokenizer(unique, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        table = encoder(ids)[0]
    index = torch.tensor([unique.index(p) for p in prompts])
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.lr)
    unet.train()
    loss = torch.zeros(())
    bar = tqdm(list(_batches(len(latents), config.batch_size, config.unet_steps, generator)), desc="toy UNet",
               disable=not progress)
    for idx in bar:
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (len(idx),), generator=generator)
        drop = torch.rand(len(idx), generator=generator) < config.cfg_dropout
        cond = table[torch.where(drop, len(unique) - 1, index[idx])]
        pred = unet(scheduler.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    unet.eval()
    return loss.item()


def pretrain(config: PretrainConfig, out: Path, progress: bool = True) -> Path:
    """Train the toy base model and save it as a diffusers folder at ``out``."""
    from diffusers import StableDiffusionPipeline

    start = time.time()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images, prompts = sample_images(config.images, config.seed)
    pixels = images * 2 - 1
    components = toy_components(config.seed)
    scale = _train_vae(components["vae"], pixels, config, generator, progress)
    with torch.no_grad():
        vae = components["vae"]
        latents = torch.cat([vae.encode(pixels[i:i + 256]).latent_dist.mean for i in range(0, len(pixels), 256)]) * scale
    final_loss = _train_unet(components, latents, prompts, config, generator, progress)
    StableDiffusionPipeline(**components).save_pretrained(out, safe_serialization=True)
    (out / "pretrain.json").write_text(json.dumps(
        {"config": asdict(config), "seconds": round(time.time() - start, 1), "final_unet_loss": final_loss,
         "latent_scale": scale}, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m diffalign.toy.pretrain --out FOLDER``: pretrain the default toy base model (the
    shipped ``base_model/`` is this command's output, ~6 minutes on 2 cores)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.split(":", 1)[1].strip())
    parser.add_argument("--out", required=True, type=Path, help="folder to write the pipeline to (replaced)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pretrain(PretrainConfig(), tmp, progress=not args.no_progress)
    shutil.rmtree(args.out, ignore_errors=True)
    tmp.rename(args.out)
    print(f"toy base model written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
