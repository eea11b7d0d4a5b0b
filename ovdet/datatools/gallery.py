"""A self-contained HTML page of search results: one section per query, a thumbnail per hit with
its best box drawn, its rank, score and file name (``ovdet search --html``)."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ovdet.data.images import ImageReadError, decode_image
from ovdet.datatools.search import SearchResults
from ovdet.io import atomic_write_text
from ovdet.structures import Detections

__all__ = ["search_page", "thumbnail"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#fafafa;color:#222}
h1{font-size:1.3rem} h2{font-size:1.1rem;margin-top:2rem} .meta{color:#666;font-size:.85rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px;align-items:start}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
figure img{width:100%;height:auto;display:block} figcaption{font-size:.8rem;margin-top:4px;word-break:break-all}
.score{font-weight:600} .approx{color:#a60}
"""


def thumbnail(image: np.ndarray, box: np.ndarray, label: str, size: int = 320) -> bytes:
    """JPEG bytes of ``image`` (H, W, 3) BGR with ``box`` (4,) xyxy drawn and labelled, longest
    side ``size`` pixels."""
    det = Detections(
        boxes=np.asarray(box, np.float64).reshape(1, 4), scores=np.ones(1), labels=np.zeros(1, np.int64),
        names=[label], image_size=image.shape[:2],
    )  # fmt: skip
    canvas = det.plot(image, show_scores=False)
    scale = size / max(canvas.shape[:2])
    if scale < 1:
        canvas = cv2.resize(canvas, (round(canvas.shape[1] * scale), round(canvas.shape[0] * scale)), cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:  # pragma: no cover - encoding a valid uint8 image does not fail
        raise ValueError("could not encode a thumbnail")
    return data.tobytes()


def search_page(
    results: Sequence[SearchResults], path: str | os.PathLike, title: str = "ovdet search", size: int = 320
) -> Path:
    """Write one HTML file (thumbnails inlined as data URIs) showing every query's hits.

    A hit whose image can no longer be read is listed with the reason instead of a thumbnail.

    Returns:
        The written path.
    """
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for res in results:
        how = f"re-ranked {res.candidates} candidates with the detector" if res.candidates else "index scores"
        parts.append(
            f"<h2>{html.escape(res.query)}</h2><p class=meta>{len(res.hits)} images, {how}</p><div class=grid>"
        )
        for rank, hit in enumerate(res.hits, 1):
            name = Path(hit.path).name
            caption = (
                f"<span class='score{'' if hit.exact else ' approx'}'>#{rank} {hit.score:.3f}</span>"
                f"{'' if hit.exact else ' (index estimate)'} {html.escape(name)}"
            )
            try:
                data = thumbnail(decode_image(hit.path), hit.box, f"{res.query} {hit.score:.2f}", size)
                img = f"<img alt='{html.escape(name)}' src='data:image/jpeg;base64,{base64.b64encode(data).decode()}'>"
            except (ImageReadError, OSError) as e:
                img = f"<p class=approx>cannot read the image: {html.escape(str(e))}</p>"
            parts.append(f"<figure title='{html.escape(hit.path)}'>{img}<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    return atomic_write_text(path, "\n".join(parts))
