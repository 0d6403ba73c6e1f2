"""The ``diffalign`` command: the console script and ``python -m diffalign`` run it, every subcommand
documents its options, and an unknown option is refused."""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffalign.cli import build_parser, main


def test_console_script_is_installed():
    # The command pip installs beside this interpreter (on PATH once the venv is activated).
    exe = shutil.which("diffalign", path=str(Path(sys.executable).parent))
    assert exe, "pip install -e . should install a diffalign command"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("train", "cache", "build", "score", "evaluate", "demo", "info", "check-config"):
        assert command in out


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "diffalign", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("diffalign ")


def test_a_command_rejects_an_option_it_does_not_know(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["info", "some/pipeline", "--no-such-option"])  # before anything runs
    assert exit_.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, options",
    [
        (["build", "pick-a-pic"], ["--out", "--kind", "--split", "--keep-ties", "--dedup-prompts", "--limit",
                                   "--shard-size", "--strict", "--overwrite", "--no-progress"]),
        (["build", "synthetic"], ["--prompt-column", "--prompt-split", "--limit-prompts", "--out", "--generator",
                                  "--images-per-prompt", "--seed", "--steps", "--guidance-scale", "--height", "--width",
                                  "--batch-size", "--dtype", "--reward", "--reward-path", "--reward-weight",
                                  "--reward-stats", "--pairs", "--shard-size", "--overwrite", "--no-progress"]),
        (["build", "dual-captions"], ["--out", "--strategy", "--captioner", "--caption-template", "--text-model",
                                      "--level", "--seed", "--max-new-tokens", "--shard-size", "--overwrite",
                                      "--no-progress"]),
        (["build", "filter"], ["--out", "--fraction", "--weight", "--reward", "--reward-path", "--text-model", "--k",
                               "--shard-size", "--overwrite"]),
        (["cache"], ["--model", "--revision", "--family", "--resolution", "--batch-size", "--shard-size", "--dtype",
                     "--model-dtype", "--no-t5", "--max-sequence-length", "--no-progress"]),
        (["evaluate"], ["--base", "--base-lora", "--candidate", "--candidate-lora", "--prompts", "--prompt-column",
                        "--limit", "--geneval-seed", "--geneval-n", "--out", "--samples", "--seed", "--steps", "--guidance",
                        "--height", "--width", "--negative-prompt", "--gen-batch-size", "--reward", "--model",
                        "--no-geneval", "--detector", "--detector-model", "--color-classifier", "--color-model",
                        "--no-progress"]),
        (["score"], ["--images", "--prompts", "--prompt", "--reward", "--model", "--dtype", "--device", "--batch-size",
                     "--no-progress", "--out", "--strict"]),
    ],
)
def test_help_describes_every_option(command, options, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text, option
    parser = _subparser(build_parser(), command)
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert not undocumented, f"options without help: {undocumented}"


def _subparser(parser, names):
    for name in names:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def test_info(tiny_path, capsys):
    assert main(["info", str(tiny_path("sd21"))]) == 0
    assert capsys.readouterr().out.split() == ["family:", "sd", "prediction_type:", "v_prediction"]
    assert main(["info", str(tiny_path("flux"))]) == 0
    assert capsys.readouterr().out.split() == ["family:", "flux", "prediction_type:", "flow"]
    assert main(["info", str(tiny_path("sd35"))]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "family: sd3", "prediction_type: flow", "architecture: SD3.5 (MMDiT-X: dual attention in 1 of 2 blocks, QK norm rms_norm)"]
    assert main(["info", str(tiny_path("sd21") / "unet")]) == 1
    assert "no model_index.json" in capsys.readouterr().err
