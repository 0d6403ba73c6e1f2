"""Every numeric option of every command has a range, checked when the arguments are parsed:
before any file is read or any model loads (the paths below do not even exist)."""

import re

import pytest

from diffalign.arguments import MAX_SIDE, SCALE, SIDE, integer, number
from diffalign.cli import build_parser, main

X = "/nonexistent/x"
# (command, required arguments, option, a value out of its range)
CASES = [
    (["cache", X, "--model", X], "--resolution", "-32"),
    (["cache", X, "--model", X], "--resolution", str(MAX_SIDE + 8)),
    (["cache", X, "--model", X], "--batch-size", "0"),
    (["cache", X, "--model", X], "--shard-size", "-1"),
    (["cache", X, "--model", X], "--frames", "0"),
    (["cache", X, "--model", X], "--frame-stride", "0"),
    (["cache", X, "--model", X], "--max-sequence-length", "0"),
    (["build", "pick-a-pic", X, "--out", X], "--limit", "0"),
    (["build", "pick-a-pic", X, "--out", X], "--shard-size", "0"),
    (["build", "video-pairs", X, "--out", X], "--limit", "-5"),
    (["build", "experts", "--from", X, "--out", X], "--top", "0"),
    (["build", "filter", X, "--out", X], "--fraction", "0"),
    (["build", "filter", X, "--out", X], "--fraction", "1.5"),
    (["build", "filter", X, "--out", X], "--fraction", "nan"),
    (["build", "filter", X, "--out", X], "--k", "0"),
    (["build", "dual-captions", X, "--out", X], "--max-new-tokens", "0"),
    (["build", "dual-captions", X, "--out", X], "--seed", "-1"),
    (["build", "synthetic", X, "--out", X, "--generator", X, "--reward", "pickscore"], "--images-per-prompt", "0"),
    (["build", "synthetic", X, "--out", X, "--generator", X, "--reward", "pickscore"], "--height", "100000"),
    (["build", "synthetic", X, "--out", X, "--generator", X, "--reward", "pickscore"], "--guidance-scale", "-1"),
    (["build", "synthetic", X, "--out", X, "--generator", X, "--reward", "pickscore"], "--guidance-scale", "inf"),
    (["build", "synthetic", X, "--out", X, "--generator", X, "--reward", "pickscore"], "--batch-size", "0"),
    (["build", "synthetic", X, "--out", X, "--generator", X, "--reward", "pickscore"], "--steps", "0"),
    (["score", "--images", X, "--reward", "pickscore"], "--batch-size", "0"),
    (["score", "--images", X, "--reward", "pickscore"], "--max-frames", "-2"),
    (["score", "--images", X, "--reward", "pickscore"], "--shard-size", "0"),
    (["evaluate", "--base", X, "--out", X], "--height", "100000"),
    (["evaluate", "--base", X, "--out", X], "--width", "0"),
    (["evaluate", "--base", X, "--out", X], "--limit", "0"),
    (["evaluate", "--base", X, "--out", X], "--samples", "0"),
    (["evaluate", "--base", X, "--out", X], "--steps", "-1"),
    (["evaluate", "--base", X, "--out", X], "--gen-batch-size", "0"),
    (["evaluate", "--base", X, "--out", X], "--guidance", "nan"),
    (["evaluate", "--base", X, "--out", X], "--geneval-n", "0"),
    (["evaluate", "--base", X, "--out", X], "--fps", "0"),
    (["demo"], "--steps", "0"),
]


@pytest.mark.parametrize("command, option, value", CASES, ids=[f"{' '.join(c[:2])}{o}={v}" for c, o, v in CASES])
def test_a_number_out_of_range_is_refused_before_anything_runs(command, option, value, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command, option, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: expected" in err and "Traceback" not in err, err


def test_every_numeric_option_of_every_command_has_a_range():
    """No option of the ``diffalign`` command parses a bare int or float."""
    import argparse

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, [*path, name])
            elif action.type in (int, float):
                yield " ".join(path), action.option_strings

    assert list(walk(build_parser(), [])) == []


def test_the_types_state_their_range():
    import argparse

    assert integer(1)("3") == 3 and number(0, 1, above=True)("1") == 1.0 and SCALE("0") == 0.0
    assert SIDE("8") == 8 and SIDE(str(MAX_SIDE)) == MAX_SIDE
    for parse, text, wanted in [(integer(1), "0", "an integer ≥ 1"), (SIDE, "7", "an integer in [8, 16384]"),
                                (number(0, 1, above=True), "0", "a number in (0, 1]"), (SCALE, "-inf", "a number ≥ 0"),
                                (integer(1), "two", "an integer ≥ 1")]:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"expected {wanted}, got")):
            parse(text)
