"""``peer_table.py``: one command runs the tiny and the mini peer tables and writes both (the runs
themselves are ``train_step``'s, tested in ``test_train_step_benchmark.py``; stood in for here)."""

from diffalign.benchmarks import peer_table


def test_one_command_makes_both_tables(tmp_path, monkeypatch):
    runs = []

    def fake_train_step(argv):
        runs.append(argv)
        name = argv[argv.index("--name") + 1]
        (tmp_path / f"{name}.md").write_text(f"Command: `x`\n\n| set-up |\n|---|\n| {name} |\n")
        return 0

    end_to_end = []

    def fake_end_to_end(train_step_argv, out, name, argv):
        end_to_end.append((train_step_argv, name))
        return f"| {name} |\n"

    monkeypatch.setattr(peer_table, "train_step_main", fake_train_step)
    monkeypatch.setattr(peer_table, "end_to_end_table", fake_end_to_end)
    assert peer_table.table_main(["--peer-script", "/d/train_diffusion_dpo_sdxl.py", "--out", str(tmp_path),
                                  "--extra-setups", "diffalign+regional", "--rounds", "2"]) == 0
    assert [run[run.index("--name") + 1] for run in runs] == ["train_step-peer-tiny", "train_step-peer-mini"]
    tiny, mini = runs
    assert tiny[tiny.index("--batch-size") + 1] == "4" and "--size" not in tiny
    assert mini[mini.index("--size") + 1] == "mini" and mini[mini.index("--batch-size") + 1] == "1"
    for run in runs:
        setups = run[run.index("--setups") + 1:run.index("--peer-script")]
        assert setups == ["peer", "naive", "diffalign", "diffalign-uncached", "diffalign+regional"]
        assert run[run.index("--peer-script") + 1] == "/d/train_diffusion_dpo_sdxl.py"
        assert run[run.index("--rounds") + 1] == "2"
    [(e2e_argv, e2e_name)] = end_to_end  # the mini size only, by default
    assert e2e_name == "end_to_end-peer-mini" and e2e_argv[e2e_argv.index("--pairs") + 1] == "16"
    assert e2e_argv[e2e_argv.index("--rounds") + 1] == "2" and e2e_argv[e2e_argv.index("--size") + 1] == "mini"
    both = (tmp_path / "train_step-peer.md").read_text()
    assert both.startswith("Command: `python benchmarks/peer_table.py --peer-script")
    assert both.index("| train_step-peer-tiny |") < both.index("| train_step-peer-mini |") < both.index(
        "| end_to_end-peer-mini |")
