"""The rollout-cost benchmark, reduced: each set-up collects once per repeat with the same seeds,
guidance sends twice the rows through the denoiser, and the table names every set-up."""

import torch

from diffalign.benchmarks.rollout_cost import SETUPS, measure, table


def test_each_setup_is_timed_and_guidance_doubles_the_rows(tiny_path, monkeypatch):
    from diffalign.families import load

    rows = {}
    real_load = load

    def counting_load(path, **kwargs):
        family = real_load(path, **kwargs)
        family.denoiser.register_forward_pre_hook(
            lambda module, args, kwargs: rows.setdefault("now", []).append(
                (args[0] if args else kwargs["sample"]).shape[0]), with_kwargs=True)
        return family

    monkeypatch.setattr("diffalign.families.load", counting_load)
    setups = {"guided": {"steps": 2, "guidance": 4.0, "ode": "ddim"},
              "free": {"steps": 2, "guidance": 1.0, "ode": "dpm2"}}
    results = measure(tiny_path("sd15"), setups, repeats=2, prompts=2, images=2,
                      rewards=[{"name": "diffalign.toy.reward:ToyReward"}])
    assert list(results) == ["guided", "free"]
    assert all(len(r["seconds"]) == 2 and min(r["seconds"]) > 0 for r in results.values())
    assert all(torch.isfinite(torch.tensor(r["reward"])) for r in results.values())
    calls = rows["now"]
    assert calls[:2] == [8, 8] and calls[2:4] == [4, 4]  # 2 prompts × 2 images, guided: both halves in one batch
    text = table(results)
    assert "| guided |" in text and "| free |" in text and "1.00×" in text
    assert set(SETUPS) >= {"ddim 10, guidance 4", "dpm2 5, CFG-free"}
