"""The prompt-set reader: every format gives the same prompts, in order; errors name the problem."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffalign.data.prompts import PromptSourceError, read_prompts

PROMPTS = ["a red cat", "a blue dog, at night", 'a "quoted" tree', "a red cat"]


def _write_all(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.txt").write_text("\n".join(PROMPTS[:2]) + "\n\n  " + "\n".join(PROMPTS[2:]) + "\n")
    (folder / "list.json").write_text(json.dumps(PROMPTS))
    (folder / "records.json").write_text(json.dumps({"prompts": [{"Prompt": p, "id": i} for i, p in enumerate(PROMPTS)]}))
    (folder / "p.jsonl").write_text("\n".join(json.dumps({"caption": p, "n": 1}) for p in PROMPTS) + "\n")
    with open(folder / "p.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "category"])
        writer.writerows([i, p, "x"] for i, p in enumerate(PROMPTS))
    pq.write_table(pa.table({"image": [b"\x89PNG"] * 4, "Text": PROMPTS}), folder / "p.parquet")
    hub = folder / "hub"
    hub.mkdir()
    pq.write_table(pa.table({"category": ["x"] * 4, "my_prompt": PROMPTS}), hub / "train-00000.parquet")
    return folder


@pytest.mark.parametrize("name, column", [("p.txt", None), ("list.json", None), ("records.json", None),
                                          ("p.jsonl", None), ("p.csv", None), ("p.csv", "text"), ("p.parquet", None),
                                          ("p.parquet", "Text"), ("hub", "my_prompt")])
def test_every_format_reads_the_same_prompts(tmp_path, name, column):
    folder = _write_all(tmp_path)
    assert read_prompts(folder / name, column=column) == PROMPTS
    assert read_prompts(folder / name, column=column, dedup=True) == PROMPTS[:3]
    assert read_prompts(folder / name, column=column, limit=2) == PROMPTS[:2]


def test_errors_name_the_problem(tmp_path):
    folder = _write_all(tmp_path)
    with pytest.raises(PromptSourceError, match="no column category2; found"):
        read_prompts(folder / "p.csv", column="category2")
    with pytest.raises(PromptSourceError, match="no such prompt file"):
        read_prompts(folder / "missing.txt")
    (folder / "empty.txt").write_text("\n \n")
    with pytest.raises(PromptSourceError, match="holds no prompts"):
        read_prompts(folder / "empty.txt")
    (folder / "bad.jsonl").write_text(json.dumps({"prompt": 3}) + "\n")
    with pytest.raises(PromptSourceError, match=r"bad.jsonl:1: column 'prompt' holds int"):
        read_prompts(folder / "bad.jsonl")
    with pytest.raises(PromptSourceError, match="could not open dataset"):
        read_prompts(folder / "no-such-dataset-folder")


def test_parquet_reads_one_column_and_names_the_others(tmp_path):
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.table({"caption": ["  a cat ", "", "a dog"], "n": [1, 2, 3]}), path)
    assert read_prompts(path) == ["a cat", "a dog"]  # stripped, blank skipped, as every format
    with pytest.raises(PromptSourceError, match=r"no column title; found \['caption', 'n'\]"):
        read_prompts(path, column="title")
    with pytest.raises(PromptSourceError, match="column 'n' holds int, not text"):
        read_prompts(path, column="n")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(PromptSourceError, match="not a readable Parquet file"):
        read_prompts(tmp_path / "broken.parquet")
