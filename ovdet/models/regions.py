"""Per-anchor region embeddings: what the contrastive head compares each text against.

Both heads score a region against a unit text embedding ``t`` linearly:

* v1: ``logit = exp(logit_scale) · <x/|x|, t> + bias``
* v2: ``logit = exp(logit_scale) · <BN(x), t> + bias``

so with ``e = exp(logit_scale) · x/|x|`` (v1) or ``e = exp(logit_scale) · BN(x)`` (v2), the logit of
any text is ``<e, t> + bias``: one inner product. :func:`region_outputs` returns ``e``, the bias and
the decoded box of every anchor, for a text search index (:mod:`ovdet.datatools.search`).

The neck's text attention makes ``e`` depend on the vocabulary the network ran with (``text``):
the logits it gives for another text are the network's logits for that text only where the
attention would have been the same.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ovdet.models.detector import OVDetector, decode_outputs
from ovdet.models.head import BNContrastiveHead
from ovdet.models.layers import make_anchors
from ovdet.models.outputs import RawOutputs

__all__ = ["RegionOutputs", "region_outputs"]


class RegionOutputs(NamedTuple):
    """Every anchor's box, embedding and scores, for B images and A anchors.

    Attributes:
        boxes: (B, A, 4) xyxy in network-input pixels.
        embeddings: (B, A, D) region embeddings ``e``: the logit of a unit text ``t`` is
            ``<e, t> + bias``.
        bias: (A,) the contrastive bias of each anchor's level.
        scores: (B, A, K) sigmoid scores against the K texts the network ran with.
    """

    boxes: torch.Tensor
    embeddings: torch.Tensor
    bias: torch.Tensor
    scores: torch.Tensor


@torch.no_grad()
def region_outputs(model: OVDetector, images: torch.Tensor, text: torch.Tensor) -> RegionOutputs:
    """Run ``model`` on ``images`` with vocabulary ``text`` and return every anchor's region embedding.

    ``scores`` equal ``model(images, text)``'s sigmoid class scores, and ``<e, t> + bias`` equals the
    head's logit for any unit ``t`` given the same neck features (up to float rounding). The model
    may be fused or not; it should be in eval mode.

    Args:
        model: the network.
        images: (B, 3, H, W) RGB in [0, 1], H and W multiples of 32.
        text: (K, D) class embeddings (normalised here).

    Returns:
        :class:`RegionOutputs`.
    """
    b = images.shape[0]
    text = F.normalize(text.to(images.dtype), dim=-1)  # (K, D)
    feats = model.neck(model.backbone(images), text.unsqueeze(0).expand(b, -1, -1))
    head = model.head
    box, emb, bias = [], [], []
    for x, box_branch, embed_branch, contrast in zip(feats, head.box_branches, head.embed_branches, head.contrast):
        box.append(box_branch(x).flatten(2))  # (B, 4R, H·W)
        e = embed_branch(x)  # (B, D, H, W)
        e = contrast.norm(e) if isinstance(contrast, BNContrastiveHead) else F.normalize(e, dim=1)
        emb.append((e * contrast.logit_scale.exp()).flatten(2))  # (B, D, H·W)
        bias.append(contrast.bias.expand(e.shape[2] * e.shape[3]))  # (H·W,)
    box_logits = torch.cat(box, 2)  # (B, 4R, A)
    embeddings = torch.cat(emb, 2).transpose(1, 2)  # (B, A, D)
    bias_a = torch.cat(bias)  # (A,)
    cls_logits = torch.einsum("bad,kd->bka", embeddings, text) + bias_a  # (B, K, A)
    anchors, strides = make_anchors([f.shape[2:] for f in feats], model.cfg.strides, box_logits.dtype, images.device)
    boxes, scores = decode_outputs(RawOutputs(box_logits, cls_logits, anchors, strides), model.cfg.reg_max)
    return RegionOutputs(boxes, embeddings.contiguous(), bias_a, scores)
