"""docs/architecture.md is the map of the package: every folder and top-level module of
diffalign/ has a line there, so a new one cannot be added without saying what it is for."""

from pathlib import Path

import diffalign

ROOT = Path(diffalign.__file__).resolve().parent
MAP = ROOT.parent / "docs" / "architecture.md"


def _named(text: str, path: str) -> bool:
    return f"`{path}`" in text or f"**`{path}`**" in text


def test_every_folder_of_the_package_has_a_line_in_the_architecture_document():
    text = MAP.read_text()
    folders = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders, "no package folders found"
    missing = [name for name in folders if not _named(text, f"diffalign/{name}/")]
    assert missing == [], f"docs/architecture.md has no line for diffalign/{', diffalign/'.join(missing)}/"


def test_every_top_level_module_has_a_line_in_the_architecture_document():
    text = MAP.read_text()
    modules = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    missing = [name for name in modules if not _named(text, f"diffalign/{name}") and f"`{name}`" not in text]
    assert missing == [], f"docs/architecture.md has no line for {', '.join(missing)}"


def test_the_check_notices_a_folder_without_a_line():
    assert not _named("- `diffalign/steps/`: ...", "diffalign/newfolder/")
    assert _named("- `diffalign/steps/`: ...", "diffalign/steps/")


def test_the_package_docstring_points_to_the_map():
    assert "docs/architecture.md" in diffalign.__doc__
