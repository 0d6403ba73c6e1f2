"""Fixtures of the builder tests."""

import pytest
from pickapic_source import pick_rows, write_parquet


@pytest.fixture
def pick_source(tmp_path):
    """The ten rows of ``pick_rows`` as three Parquet files."""
    return write_parquet(pick_rows(), tmp_path / "pickapic")
