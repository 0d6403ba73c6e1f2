"""Train a step-aware preference model (SPO's SPM) on human pairs; the logic lives in
``diffalign.training.step_aware``.

    python reward_models/train_step_aware.py --data pickapic_v1_pairs/ \
        --base-model runwayml/stable-diffusion-v1-5 --out runs/spm-sd15 --steps 8000 --batch-size 16

Add ``--eval-every 250 --patience 4`` to stop once the held-out pair loss has not improved for
four evaluations, keeping the best evaluation's weights as ``final/``.

Run it again with ``--resume latest`` to continue an interrupted run; ``accelerate launch`` works
for several GPUs. Defaults are the authors' SD1.5 settings (lr 3e-6, weight decay 0.3, 500 warmup
steps, CFG 5, init from PickScore_v1).
"""

import argparse
import json
import sys

from diffalign.training.step_aware import SPMTrainConfig, train_step_aware


def parse(argv=None) -> tuple[SPMTrainConfig, int | None]:
    defaults = SPMTrainConfig(data="", base_model="", out="")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="preference dataset folder of pairs (best first; equal ranks = tie)")
    parser.add_argument("--base-model", required=True, help="frozen diffusers pipeline whose x̂0 the SPM scores")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, metrics, final model)")
    parser.add_argument("--init", default=None, help="SPM folder, or CLIP/PickScore model (default PickScore_v1)")
    for name in ("steps", "batch_size", "grad_accum", "warmup_steps", "resolution", "eval_every", "eval_batch_size",
                 "checkpoint_every", "keep_checkpoints", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay", "eps", "max_grad_norm", "guidance", "heldout_fraction"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    parser.add_argument("--patience", type=int, default=None,
                        help="stop once this many evaluations (every --eval-every steps) in a row have not lowered "
                             "the held-out pair loss by more than --min-delta")
    parser.add_argument("--min-delta", type=float, default=defaults.min_delta, help="nats; see --patience")
    parser.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                        help="final/ holds the best evaluation's weights (default: when --patience is given)")
    parser.add_argument("--eval-times", type=float, nargs="+", default=list(defaults.eval_times),
                        help="normalised times of the held-out accuracy (DDPM index / 999)")
    parser.add_argument("--lr-scheduler", default=defaults.lr_scheduler, help="a diffusers get_scheduler name")
    parser.add_argument("--train-parts", choices=("all", "time"), default=defaults.train_parts)
    parser.add_argument("--base-dtype", choices=("float32", "bfloat16", "float16"), default=defaults.base_dtype)
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=defaults.mixed_precision)
    parser.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument("--stop-after", type=int, default=None, help="stop with a checkpoint after this step")
    args = vars(parser.parse_args(argv))
    stop_after = args.pop("stop_after")
    return SPMTrainConfig(**args), stop_after


def main(argv=None) -> int:
    config, stop_after = parse(argv)
    summary = train_step_aware(config, stop_after=stop_after)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
