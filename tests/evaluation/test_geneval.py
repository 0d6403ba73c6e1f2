"""diffalign.evaluation.geneval: a folder in GenEval's layout scored end to end, and the names a
detector or colour-classifier plugin imports from this module (they moved to its parts)."""

import json

from PIL import Image

from diffalign.evaluation import geneval, geneval_models, geneval_prompts, geneval_rules


def test_the_parts_names_stay_importable_from_geneval():
    for name in geneval.__all__:
        assert hasattr(geneval, name), name
    assert geneval.Detection is geneval_rules.Detection and geneval.load_detector is geneval_models.load_detector
    assert geneval.generate_prompts is geneval_prompts.generate_prompts


class TwoDogs:
    """Finds two dogs side by side in every image."""

    name = "two-dogs"

    def detect(self, image):
        return [geneval.Detection("dog", (0.0, 0.0, 10.0, 10.0), 0.95), geneval.Detection("dog", (20.0, 0.0, 30.0, 10.0), 0.95)]


def test_score_folder_reads_the_layout_and_applies_the_rules(tmp_path):
    records = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
               {"tag": "counting", "include": [{"class": "dog", "count": 3}], "exclude": [{"class": "dog", "count": 4}],
                "prompt": "a photo of three dogs"}]
    for index, record in enumerate(records):
        (tmp_path / f"{index:05d}" / "samples").mkdir(parents=True)
        (tmp_path / f"{index:05d}" / "metadata.jsonl").write_text(json.dumps(record))
        for sample in range(2):
            Image.new("RGB", (32, 32), "white").save(tmp_path / f"{index:05d}" / "samples" / f"{sample:04d}.png")
    (tmp_path / "00000" / "samples" / "notes.txt").write_text("not an image")  # ignored
    rows = geneval.score_folder(tmp_path, TwoDogs(), None)
    assert [(r["prompt_index"], r["sample"], r["correct"]) for r in rows] == [(0, 0, True), (0, 1, True), (1, 0, False), (1, 1, False)]
    assert rows[2]["reason"] == "expected dog>=3, found 2" and rows[0]["details"] == {"dog": [[0.0, 0.0, 10.0, 10.0, 0.95],
                                                                                              [20.0, 0.0, 30.0, 10.0, 0.95]]}
    assert geneval_rules.summarise(rows)["tags"] == {"single_object": 1.0, "counting": 0.0}
