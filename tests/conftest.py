"""Shared fixtures. Nothing here, nor in any test, reaches a model hub."""

import os
import tempfile

# Set before transformers/diffusers/huggingface_hub are imported anywhere: no test may wait on a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# diffalign's own cache (toy models, weight digests) goes to a folder of this session, not ~/.cache;
# under pytest-xdist (the default, `-n auto` in pyproject.toml) each worker gets its own subfolder, so
# no test sees another worker's entries.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
os.environ.setdefault("DIFFALIGN_CACHE", tempfile.mkdtemp(prefix="diffalign-cache-"))
if WORKER:
    os.environ["DIFFALIGN_CACHE"] = os.path.join(os.environ["DIFFALIGN_CACHE"], WORKER)
    os.makedirs(os.environ["DIFFALIGN_CACHE"], exist_ok=True)

import pytest  # noqa: E402
import torch  # noqa: E402

from diffalign.testing import TINY_FAMILIES, save_tiny_pipeline  # noqa: E402

# One thread per xdist worker (the workers fill the cores; two threads each would oversubscribe
# them), at most two without xdist. Child processes get the same count (`diffalign_child`).
torch.set_num_threads(1 if WORKER else min(2, torch.get_num_threads()))
# `DIFFALIGN_TEST_ONEDNN=0 python -m pytest`: the suite with oneDNN's kernels off, one of the kernel
# settings every test must pass under (with OMP_NUM_THREADS=1 and =2).
if os.environ.get("DIFFALIGN_TEST_ONEDNN") == "0":
    torch.backends.mkldnn.enabled = False


@pytest.fixture(scope="session")
def diffalign_child():
    """``diffalign_child(*args) -> (argv, env)`` for ``python -m diffalign ARGS`` in a child process
    that runs the kernels this process runs (its thread count, oneDNN on or off), so that what the
    child computes can be compared with what the test computes in process."""
    import sys

    def command(*args: str) -> tuple[list[str], dict]:
        env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
        if torch.backends.mkldnn.enabled:
            return [sys.executable, "-m", "diffalign", *args], env
        start = ("import runpy, sys, torch; torch.backends.mkldnn.enabled = False; sys.argv[0] = 'diffalign'; "
                 "runpy.run_module('diffalign', run_name='__main__')")
        return [sys.executable, "-c", start, *args], env

    return command


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """``tiny_path(kind, with_t5=True) -> folder``: each tiny pipeline saved once per session."""
    saved = {}

    def get(kind: str, with_t5: bool = True):
        key = (kind, with_t5)
        if key not in saved:
            folder = tmp_path_factory.mktemp(f"tiny-{kind}{'' if with_t5 else '-no-t5'}")
            saved[key] = save_tiny_pipeline(kind, folder, with_t5=with_t5)
        return saved[key]

    return get


SLOW_KINDS = ("sd35", "flux2", "qwen_image", "wan22", "wan22_ti2v")
"""Tiny pipelines whose pass through every family-wide test is slow-marked (CI budget): SD3.5 differs
from SD3 only inside diffusers' transformer, Wan 2.2 from Wan 2.1 in its experts and VAE, Qwen-Image
and FLUX.2 FLUX's packed tokens, and their
own tests (detection, sampling against their pipelines, training) are in the default suite."""


@pytest.fixture(scope="session", params=[pytest.param(k, marks=pytest.mark.slow) if k in SLOW_KINDS else k
                                         for k in TINY_FAMILIES])
def tiny_kind(request):
    """Each tiny pipeline in turn: sd15 (epsilon), sd21 (v), sdxl, sd3, sd35, flux, flux2, qwen_image (flow), wan, wan22, wan22_ti2v (video)."""
    return request.param


@pytest.fixture(scope="session")
def tiny_family(tiny_kind, tiny_path):
    """The saved tiny pipeline of ``tiny_kind`` loaded through ``diffalign.families.load``."""
    from diffalign.families import load

    return load(tiny_path(tiny_kind))


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is when written to."""

    def write(self, text):
        import sys

        return sys.stderr.write(text)

    def flush(self):
        import sys

        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _library_logs_to_the_current_stderr():
    """diffusers, transformers, huggingface_hub and datasets log through handlers bound to the
    ``sys.stderr`` of the test that first logged (diffusers and transformers even pin the handler's
    ``flush`` to that stream's); once pytest closes that capture, their next warning prints
    "--- Logging error ---" and a traceback into whatever test is running. Bind every console
    handler to the current stream instead."""
    import logging

    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler and not isinstance(handler.stream, _CurrentStderr):
                handler.stream = _CurrentStderr()  # not setStream: it flushes the old, maybe closed, one
                handler.__dict__.pop("flush", None)  # StreamHandler's own flush, of the new stream
    yield
