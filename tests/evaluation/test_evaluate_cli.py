"""``diffalign evaluate`` end to end with tiny pipelines, a tiny PickScore, a fake detector and colour
classifier; generation seeds and resume; the report in headless Chromium."""

import json
import shutil
import subprocess

import pytest
import torch
from PIL import Image

from diffalign.cli import main
from diffalign.evaluation.compare import compare_scores
from diffalign.evaluation.generate import GenerationMismatchError, GenerationSettings, generate_images, sample_path
from diffalign.evaluation.geneval_rules import Detection


class FakeDetector:
    """Sees the same dog left of a cat in every image (loaded by the CLI as ``test_evaluate_cli:FakeDetector``)."""

    name = "fake"

    def detect(self, image):
        return [Detection("dog", (0.0, 0.0, 10.0, 10.0), 0.95), Detection("cat", (20.0, 0.0, 30.0, 10.0), 0.95)]


class FakeColors:
    """Every object is red."""

    name = "all-red"

    def classify(self, image, objects, classname):
        return ["red"] * len(objects)


RECORDS = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
    {"tag": "single_object", "include": [{"class": "bird", "count": 1}], "prompt": "a photo of a bird"},
    {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}],
     "prompt": "a photo of a dog and a cat"},
    {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
     "prompt": "a photo of two dogs"},
    {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"},
    {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "blue"}], "prompt": "a photo of a blue cat"},
    {"tag": "position", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a dog left of a cat"},
    {"tag": "color_attr", "include": [{"class": "dog", "count": 1, "color": "red"}, {"class": "cat", "count": 1, "color": "red"}],
     "prompt": "a photo of a red dog and a red cat"},
]
# By hand under FakeDetector/FakeColors: single_object 1/2, two_object 1, counting 0, colors 1/2, position 1, color_attr 1.
TAG_MEANS = {"single_object": 0.5, "two_object": 1.0, "counting": 0.0, "colors": 0.5, "position": 1.0, "color_attr": 1.0}


def test_generation_seeds_layout_and_resume(tiny_path, tmp_path):
    from diffalign.evaluation.generate import load_pipeline

    model = str(tiny_path("sd15"))
    pipe = load_pipeline(model)
    settings = GenerationSettings(model, samples=2, seed=7, steps=2, guidance=3.0, height=32, width=32)
    records = [{"prompt": "a red circle"}, {"prompt": "a blue square"}]
    out = generate_images(records, tmp_path / "a", settings, pipe=pipe, batch_size=3, progress=False)
    assert json.loads((out / "00001" / "metadata.jsonl").read_text()) == {"prompt": "a blue square"}
    assert sorted(p.name for p in (out / "00000" / "samples").iterdir()) == ["0000.png", "0001.png"]
    first = [Image.open(sample_path(out, i, k)).tobytes() for i in range(2) for k in range(2)]
    assert len(set(first)) == 4  # each image its own seed
    # Batch size does not change an image: seeds are per image, on CPU generators. (To one level of
    # 255 in a few pixels: torch 2.14's CPU kernels round a batch of 3 and of 1 differently.)
    other = generate_images(records, tmp_path / "b", settings, pipe=pipe, batch_size=1, progress=False)
    for (i, k), pixels in zip([(i, k) for i in range(2) for k in range(2)], first):
        again = torch.frombuffer(bytearray(Image.open(sample_path(other, i, k)).tobytes()), dtype=torch.uint8)
        differ = (again.int() - torch.frombuffer(bytearray(pixels), dtype=torch.uint8).int()).abs()
        assert differ.max() <= 1 and (differ > 0).float().mean() < 0.01
    # Resume: a missing image is regenerated identically, existing ones are not touched.
    sample_path(out, 1, 0).unlink()
    stamp = sample_path(out, 0, 0).stat().st_mtime_ns

    class Exploding:
        calls = 0

        def __call__(self, *args, **kwargs):
            Exploding.calls += 1
            return pipe(*args, **kwargs)

    generate_images(records, out, settings, pipe=Exploding(), progress=False)
    assert Exploding.calls == 1 and sample_path(out, 0, 0).stat().st_mtime_ns == stamp
    assert Image.open(sample_path(out, 1, 0)).tobytes() == first[2]
    with pytest.raises(GenerationMismatchError):
        generate_images(records, out, GenerationSettings(model, samples=2, seed=8, steps=2), pipe=pipe, progress=False)


def test_reuse_is_keyed_by_the_content_of_the_weights(tiny_path, tmp_path):
    """A LoRA file rewritten at the same path is other weights: its images are not reused; a
    model that moved is the same weights: its images are."""
    import shutil

    from diffalign.evaluation.generate import load_pipeline

    model = tmp_path / "model"
    shutil.copytree(tiny_path("sd15"), model)
    lora = tmp_path / "lora.safetensors"  # only its bytes matter here: the pipeline is given
    lora.write_bytes(b"first training run")
    pipe = load_pipeline(str(model))
    records = [{"prompt": "a red circle"}]
    settings = GenerationSettings(str(model), str(lora), samples=1, seed=3, steps=2, height=32, width=32)
    out = generate_images(records, tmp_path / "out", settings, pipe=pipe, progress=False)

    class NoCalls:
        def __call__(self, *args, **kwargs):
            raise AssertionError("reused images were generated again")

    moved = tmp_path / "moved"
    model.rename(moved)
    generate_images(records, out, GenerationSettings(str(moved), str(lora), samples=1, seed=3, steps=2, height=32,
                                                     width=32), pipe=NoCalls(), progress=False)
    lora.write_bytes(b"second training run")  # same path, new weights
    settings = GenerationSettings(str(moved), str(lora), samples=1, seed=3, steps=2, height=32, width=32)
    with pytest.raises(GenerationMismatchError, match=r"the lora weights .*lora\.safetensors.*--regenerate"):
        generate_images(records, out, settings, pipe=NoCalls(), progress=False)
    stamp = sample_path(out, 0, 0).stat().st_mtime_ns
    generate_images(records, out, settings, pipe=pipe, progress=False, regenerate=True)
    assert sample_path(out, 0, 0).stat().st_mtime_ns != stamp
    assert json.loads((out / "generation.json").read_text())["weights"]["lora"].startswith("sha256:")


def test_compare_scores_by_hand():
    base = torch.tensor([[1.0, 2.0], [3.0, 3.0]])
    cand = torch.tensor([[2.0, 2.0], [1.0, 5.0]])
    r = compare_scores(base, cand)
    assert r["win_rate"]["value"] == pytest.approx(((1 + 0.5) / 2 + (0 + 1) / 2) / 2)
    assert r["gain"]["value"] == pytest.approx(((1 + 0) / 2 + (-2 + 2) / 2) / 2)
    assert r["base"]["value"] == pytest.approx(2.25) and r["n_prompts"] == 2 and r["n_pairs"] == 4
    same = compare_scores(base, base.clone())
    assert same["win_rate"] == {"value": 0.5, "low": 0.5, "high": 0.5}


@pytest.fixture(scope="module")
def evaluated(tiny_path, tmp_path_factory):
    from diffalign.rewards.tiny import save_tiny_clip

    root = tmp_path_factory.mktemp("evaluate")
    metadata = root / "evaluation_metadata.jsonl"
    metadata.write_text("\n".join(json.dumps(r) for r in RECORDS))
    reward = save_tiny_clip(root / "pickscore")
    out = root / "out"
    model = str(tiny_path("sd15"))
    argv = ["evaluate", "--base", model, "--prompts", str(metadata), "--out", str(out), "--samples", "2",
            "--steps", "2", "--guidance", "3", "--height", "32", "--width", "32", "--reward", "pickscore",
            "--model", str(reward), "--detector", "test_evaluate_cli:FakeDetector",
            "--color-classifier", "test_evaluate_cli:FakeColors", "--no-progress"]
    assert main(argv) == 0
    return out, argv


def test_evaluate_end_to_end(evaluated, capsys):
    out, argv = evaluated
    results = json.loads((out / "results.json").read_text())
    pick = results["rewards"]["pickscore"]
    # The candidate is the base itself, on the same seeds: every pair ties.
    w = pick["win_rate"]
    assert w["low"] <= 0.5 <= w["high"] and w["value"] == 0.5
    assert pick["gain"]["value"] == 0.0 and pick["n_prompts"] == len(RECORDS) and pick["n_pairs"] == 2 * len(RECORDS)
    assert pick["pick_probability"]["value"] == pytest.approx(0.5)
    assert pick["base"] == pick["candidate"] and abs(pick["base"]["value"]) <= 20  # tiny CLIP: 20 · cosine
    g = results["geneval"]
    assert g["label"] == "GenEval (detector=fake)"
    for arm in ("base", "candidate"):
        assert g[arm]["tags"] == pytest.approx(TAG_MEANS)
        assert g[arm]["overall"] == pytest.approx(sum(TAG_MEANS.values()) / 6)
    assert results["generation"] == {"samples": 2, "seed": 42, "steps": 2, "guidance": 3.0, "height": 32, "width": 32,
                                     "negative_prompt": None, "frames": None, "fps": 16}
    for arm in ("base", "candidate"):
        assert sample_path(out / arm, 7, 1).is_file()
        assert json.loads((out / arm / "00003" / "metadata.jsonl").read_text()) == RECORDS[3]
        assert sum(1 for _ in open(out / arm / "geneval_results.jsonl")) == 2 * len(RECORDS)
    page = (out / "report.html").read_text()
    assert "GenEval (detector=fake)" in page and page.count("data:image/png;base64,") >= 2 * 2 * 3
    # Resumable: a second run generates nothing new and gives the same numbers.
    stamp = sample_path(out / "base", 0, 0).stat().st_mtime_ns
    assert main(argv) == 0
    assert sample_path(out / "base", 0, 0).stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["rewards"] == results["rewards"]


def test_evaluate_errors(tmp_path, capsys):
    out = str(tmp_path / "eval")
    assert main(["evaluate", "--base", "x", "--prompts", str(tmp_path / "none.txt"), "--out", out]) == 1
    assert "no such prompt file" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    assert main(["evaluate", "--base", "x", "--prompts", str(prompts), "--out", out]) == 1
    assert "nothing to score" in capsys.readouterr().err


def test_report_renders_in_headless_chromium(evaluated, tmp_path):
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs only Python packages")
    out, _ = evaluated
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=2000", "--dump-dom", (out / "report.html").as_uri()]
    # The DOM shows the table; the screenshot shows that the base64 images decode and paint.
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert "<table id=\"metrics\">" in dom and "pickscore" in dom and "GenEval (detector=fake)" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([*cmd[:-2], f"--screenshot={shot}", "--window-size=1000,1400", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    colours = len(set(image.getdata()))
    assert colours > 50  # decoded noise images, not just text on white


def test_lora_candidate(evaluated, tiny_path, tmp_path):
    """A candidate with a (non-zero) LoRA: its images differ, the base arm is the same as before."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    out, argv = evaluated
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_path("sd15")))
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    StableDiffusionPipeline.save_lora_weights(save_directory=str(tmp_path / "lora"), unet_lora_layers=layers,
                                              safe_serialization=True)
    lora_argv = [a if a != str(out) else str(tmp_path / "out") for a in argv] + ["--candidate-lora", str(tmp_path / "lora")]
    assert main(lora_argv) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    before = json.loads((out / "results.json").read_text())
    assert results["candidate"]["lora"] == str(tmp_path / "lora") and "LoRA" in results["candidate"]["label"]
    assert results["rewards"]["pickscore"]["base"] == before["rewards"]["pickscore"]["base"]
    for i in range(len(RECORDS)):
        base_image = Image.open(sample_path(tmp_path / "out" / "base", i, 0)).tobytes()
        assert base_image == Image.open(sample_path(out / "base", i, 0)).tobytes()
        assert base_image != Image.open(sample_path(tmp_path / "out" / "candidate", i, 0)).tobytes()
    w = results["rewards"]["pickscore"]["win_rate"]
    assert 0 <= w["low"] <= w["value"] <= w["high"] <= 1 and w["value"] != 0.5


@pytest.mark.parametrize("name, text", [("empty.txt", "\n\n"), ("empty.jsonl", ""), ("empty.json", "[]")])
def test_an_empty_evaluation_stops_before_anything_loads(name, text, tmp_path, capsys, monkeypatch):
    import diffalign.evaluation.geneval_models as geneval_models

    def no_detector(*args, **kwargs):
        raise AssertionError("a detector was loaded for an empty prompt set")

    monkeypatch.setattr(geneval_models, "load_detector", no_detector)
    prompts = tmp_path / name
    prompts.write_text(text)
    assert main(["evaluate", "--base", str(tmp_path / "model"), "--prompts", str(prompts),
                 "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ("no prompts" in err or "empty" in err) and "Traceback" not in err, err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("held", ["results.json", "base"])
def test_evaluate_refuses_an_out_folder_it_did_not_write(held, tmp_path, capsys):
    out = tmp_path / "eval"
    (out / held).mkdir(parents=True) if "." not in held else (out.mkdir(), (out / held).write_text("mine"))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    before = sorted(p.name for p in out.rglob("*"))
    assert main(["evaluate", "--base", str(tmp_path / "model"), "--prompts", str(prompts), "--out", str(out),
                 "--reward", "aesthetic"]) == 1
    err = capsys.readouterr().err
    assert f"is not empty ({held}) and holds no evaluation" in err and "Traceback" not in err
    assert sorted(p.name for p in out.rglob("*")) == before
