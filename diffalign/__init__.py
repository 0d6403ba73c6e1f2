"""diffalign: align text-to-image diffusion models with human preferences.

Layout (see DESIGN.md): ``families`` (model maths per family), ``objectives`` (loss maths per
objective), ``data`` (preference format, builders, loader, latent cache), ``training`` (the
accelerate loop), ``rewards`` (reward models), ``evaluation``, ``toy`` (the CPU ground-truth
benchmark), ``config`` (typed configs), ``testing`` (tiny offline pipelines), ``cli``.
"""

from diffalign._version import __version__

__all__ = ["__version__"]
