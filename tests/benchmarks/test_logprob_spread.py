"""The log-probability spread benchmark: fp32 recomputation gives ratio 1, bf16 autocast does not."""

import json

from diffalign.benchmarks.logprob_spread import main


def test_fp32_is_ratio_one_and_bf16_strays(capsys):
    assert main(["--families", "sd3", "--steps", "3"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out.strip().splitlines()[-1])["rows"]
    gaps = {(r["rule"], r["recomputed_in"]): r["max_ratio_gap"] for r in rows}
    assert set(gaps) == {(rule, dtype) for rule in ("flow_sde", "cps") for dtype in ("float32", "bfloat16")}
    assert gaps["flow_sde", "float32"] < 1e-6 and gaps["cps", "float32"] < 1e-6
    assert gaps["flow_sde", "bfloat16"] > 1e-6 and gaps["cps", "bfloat16"] > 1e-6
    assert "| sd3 | flow_sde | bfloat16 |" in out
