"""The cache split over two CPU processes (gloo), as over several GPUs: same result, no work twice."""

import shutil
import subprocess

import pytest
import torch
from pickapic_source import pick_rows, write_parquet
from safetensors.torch import load_file

from diffalign.builders.pick_a_pic import build_pick_a_pic
from diffalign.data.cache import build_cache
from diffalign.families import load


@pytest.mark.slow
def test_two_processes_write_the_same_cache(tiny_path, tmp_path):
    source = write_parquet(pick_rows(), tmp_path / "src")
    build_pick_a_pic([str(source)], tmp_path / "prefs", progress=False)
    model = tiny_path("sdxl")
    single = build_cache(tmp_path / "prefs", load(model), resolution=32, shard_size=1, progress=False)
    reference = {p.name: load_file(p) for p in sorted(single.glob("shard-*.safetensors"))}
    shutil.rmtree(single)

    accelerate = shutil.which("accelerate")
    subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "0", "-m", "diffalign",
         "cache", str(tmp_path / "prefs"), "--model", str(model), "--resolution", "32", "--shard-size", "1", "--no-progress"],
        check=True, timeout=300,
    )
    shards = sorted(single.glob("shard-*.safetensors"))
    assert [p.name for p in shards] == list(reference) and len(shards) == 5
    for path in shards:
        for name, tensor in load_file(path).items():
            torch.testing.assert_close(tensor, reference[path.name][name], msg=f"{path.name}:{name}")
    assert not list(single.glob(".*.tmp"))
