"""diffalign: align text-to-image and text-to-video diffusion models with human preferences.

The map of the package is ``docs/architecture.md``: its layers, each folder's one job
(``families``, ``objectives``, ``steps``, ``solver``, ``inversion``, ``data``, ``builders``,
``rewards``, ``training``, ``evaluation``, ``toy``, ``benchmarks``, ``config``, ``testing``,
``cli``), the family, step, objective and update contracts with their shapes, and where each
kind of change goes.
"""

from diffalign._version import __version__

__all__ = ["__version__"]
