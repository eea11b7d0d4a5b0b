"""Dataset tools built on the detector: auto-labelling a folder from text prompts.

* :mod:`ovdet.datatools.label` — :class:`DatasetWriter`: detections → a YOLO or COCO dataset,
  resumable, with a contact sheet (``ovdet label``).
"""

from ovdet.datatools.label import ClassMap, DatasetWriter, LabelSummary, list_images, parse_class_map

__all__ = ["ClassMap", "DatasetWriter", "LabelSummary", "list_images", "parse_class_map"]
