"""The steps' shared setting: the tiny SD1.5 family, a frozen-copy reference and a batch of two pairs."""

import pytest

from diffalign.data.loader import GroupDataset, collate_groups
from diffalign.families import load
from diffalign.families.reference import Reference


@pytest.fixture(scope="module")
def setting(tiny_path, tmp_path_factory):
    from diffalign.testing import write_random_pairs

    pairs = write_random_pairs(tmp_path_factory.mktemp("pairs") / "pairs", pairs=2, resolution=32)
    family = load(tiny_path("sd15"))
    batch = collate_groups([GroupDataset(pairs, resolution=32)[i] for i in range(2)])
    return family, Reference(family.denoiser, lora=False), batch
