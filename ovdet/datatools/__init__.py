"""Dataset tools built on the detector: auto-labelling a folder from text prompts, and text search
over an image collection.

* :mod:`ovdet.datatools.label` — :class:`DatasetWriter`: detections → a YOLO or COCO dataset,
  resumable, with a contact sheet (``ovdet label``).
* :mod:`ovdet.datatools.search` — :class:`Index`: region embeddings of every image in a faiss
  index, queried with any text and re-ranked by the detector (``ovdet index`` / ``ovdet search``).
* :mod:`ovdet.datatools.gallery` — an HTML page of search hits (``ovdet search --html``).

faiss is imported only when an index is built or loaded (the ``[search]`` extra).
"""

from ovdet.datatools.label import ClassMap, DatasetWriter, LabelSummary, list_images, parse_class_map
from ovdet.datatools.search import (
    AddReport,
    Index,
    IndexMismatchError,
    SearchHit,
    SearchResults,
    exhaustive_search,
    model_fingerprint,
)

__all__ = [
    "AddReport",
    "ClassMap",
    "DatasetWriter",
    "Index",
    "IndexMismatchError",
    "LabelSummary",
    "SearchHit",
    "SearchResults",
    "exhaustive_search",
    "list_images",
    "model_fingerprint",
    "parse_class_map",
]
