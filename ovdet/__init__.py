"""ovdet: open-vocabulary object detection with runtime text classes.

Public API: :class:`Detector` (build, set a vocabulary, predict, save/load),
:class:`Detections` (one image's results) and :class:`Index` (text search over an image
collection). All are imported on first access, so ``import ovdet.config`` stays light.
"""

from typing import TYPE_CHECKING, Any

from ovdet._version import __version__

__all__ = ["Detections", "Detector", "Index", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from ovdet.api import Detector
    from ovdet.datatools.search import Index
    from ovdet.structures import Detections


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from ovdet.api import Detector

        return Detector
    if name == "Detections":
        from ovdet.structures import Detections

        return Detections
    if name == "Index":
        from ovdet.datatools.search import Index

        return Index
    raise AttributeError(f"module 'ovdet' has no attribute {name!r}")
