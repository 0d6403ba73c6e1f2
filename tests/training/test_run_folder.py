"""An output folder belongs to one run at a time, a killed run does not leave it locked, and a
run never writes into another run's folder unless told to resume or overwrite."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from diffalign.cli import main
from diffalign.training.run_folder import LOCK, lock

CONFIG = Path(__file__).resolve().parents[2] / "training" / "configs" / "tiny" / "sft.yaml"


def _train(tiny_path, data, out, *extra):
    return main(["train", "--config", str(CONFIG), f"model.path={tiny_path('sd15')}", f"data.path={data}",
                 f"output_dir={out}", "max_steps=2", *extra])


def test_a_live_run_holds_the_folder(tiny_path, pair_data, tmp_path, capsys):
    out = tmp_path / "run"
    with lock(out):  # another run, alive
        capsys.readouterr()
        assert _train(tiny_path, pair_data, out) == 1
        err = capsys.readouterr().err
        assert f"output_dir {out} is in use by another run (pid {os.getpid()} on" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing of the refused run was written
    assert _train(tiny_path, pair_data, out) == 0  # the lock went with its holder


def test_a_killed_run_leaves_no_stuck_lock(tmp_path):
    out = tmp_path / "run"
    code = f"from diffalign.training.run_folder import lock; lock({str(out)!r}).acquire(); print('held', flush=True); " \
           "import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert f"pid {holder.pid} on" in lock(out).holder()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    deadline = time.time() + 10
    while lock(out).holder() is not None and time.time() < deadline:
        time.sleep(0.05)
    assert lock(out).holder() is None
    assert (out / LOCK).exists()  # the file stays; only a live holder counts


def test_a_finished_folder_is_kept_unless_told(tiny_path, pair_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_path, pair_data, out, "checkpoint_every=1", "keep_checkpoints=0") == 0
    weights = out / "lora" / "pytorch_lora_weights.safetensors"
    stamp, metrics = weights.stat().st_mtime_ns, (out / "metrics.jsonl").read_text()
    capsys.readouterr()

    assert _train(tiny_path, pair_data, out) == 1
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "resume=latest" in err and "overwrite=true" in err
    assert weights.stat().st_mtime_ns == stamp and (out / "metrics.jsonl").read_text() == metrics

    # overwrite: the old run's checkpoints do not mix with the new run's.
    assert _train(tiny_path, pair_data, out, "overwrite=true", "max_steps=1", "checkpoint_every=0") == 0
    assert not (out / "checkpoints").exists()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]


def test_resume_latest_does_not_retrain_a_finished_run_from_zero(tiny_path, pair_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_path, pair_data, out, "checkpoint_every=0") == 0
    capsys.readouterr()
    assert _train(tiny_path, pair_data, out, "checkpoint_every=0", "resume=latest") == 1
    assert "resume=latest has nothing to continue from" in capsys.readouterr().err


def test_check_config_sees_the_folder_too(tiny_path, pair_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_path, pair_data, out) == 0
    capsys.readouterr()
    args = [f"model.path={tiny_path('sd15')}", f"data.path={pair_data}", f"output_dir={out}"]
    assert main(["check-config", str(CONFIG), *args]) == 1
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(["check-config", str(CONFIG), *args, "overwrite=true"]) == 0


@pytest.mark.parametrize("name", ["notes.txt", "config.yaml", "metrics.jsonl", "checkpoints", "lora"])
def test_a_folder_without_a_runs_record_must_be_empty(name, tmp_path):
    """Anything in a folder without a run's record is someone else's: refused, with overwrite too
    (which deletes only what a run wrote). With the record, the folder holds a run."""
    from diffalign.training.run_folder import RunFolderError, check

    out = tmp_path / "run"
    out.mkdir()
    check(out, None, False)  # an empty folder is free
    (out / name).mkdir() if "." not in name else (out / name).write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(RunFolderError, match=f"is not empty \\({name}\\) and holds no run"):
            check(out, None, overwrite)
    (out / "config.yaml").write_text("model: {path: m}\ndata: {path: d}\nobjective: {name: sft}\n")
    with pytest.raises(RunFolderError, match="already holds"):
        check(out, None, False)
    check(out, None, True)
