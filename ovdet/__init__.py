"""ovdet: open-vocabulary object detection with runtime text classes.

Public API: :class:`Detector` (build, set a vocabulary, predict, save/load) and
:class:`Detections` (one image's results). Both are imported on first access, so
``import ovdet.config`` stays light.
"""

from typing import TYPE_CHECKING, Any

from ovdet._version import __version__

__all__ = ["Detector", "Detections", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from ovdet.api import Detector
    from ovdet.structures import Detections


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from ovdet.api import Detector

        return Detector
    if name == "Detections":
        from ovdet.structures import Detections

        return Detections
    raise AttributeError(f"module 'ovdet' has no attribute {name!r}")
