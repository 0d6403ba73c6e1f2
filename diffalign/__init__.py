"""diffalign: align text-to-image and text-to-video diffusion models with human preferences.

Layout (see DESIGN.md): ``families`` (model maths per family), ``config`` (typed configs),
``testing`` (tiny offline pipelines); objectives, data, rewards, training and evaluation follow.
"""

from diffalign._version import __version__

__all__ = ["__version__"]
