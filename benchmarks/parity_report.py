"""Parity report: every official YOLO-World config, ultralytics vs the converted ovdet model.

For v1/v2 at each scale, builds ultralytics' ``WorldModel`` from its YAML with random weights,
perturbs BatchNorm statistics and the contrastive heads so scores spread, converts it with
ovdet's name table, and prints the largest absolute differences of the raw head outputs (box
DFL logits, class logits) and of the decoded boxes/scores on the same input and texts.

    python benchmarks/parity_report.py --scales n,s,m,l,x
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scales", default="n,s,m,l,x")
    ap.add_argument("--classes", type=int, default=7)
    args = ap.parse_args()

    from ultralytics.nn.tasks import WorldModel
    from ultralytics.utils.ops import xywh2xyxy

    from ovdet.config import ModelConfig
    from ovdet.models.detector import OVDetector
    from ovdet.weights import convert_state_dict

    print(
        f"{'model':<22} {'tensors':>7} {'box logits':>11} {'cls logits':>11} {'boxes px':>10} {'scores':>10}"
        f" {'score range':>16}"
    )
    for version, yaml in ((1, "yolov8{}-world.yaml"), (2, "yolov8{}-worldv2.yaml")):
        for scale in args.scales.split(","):
            torch.manual_seed(0)
            theirs = WorldModel(yaml.format(scale), verbose=False).eval()
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for m in theirs.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                for head in theirs.model[-1].cv4:
                    head.bias.fill_(-2.0)
                    head.logit_scale.fill_(1.0 if version == 2 else 2.0)
            ours = OVDetector(ModelConfig.scaled(version, scale)).eval()
            state, report = convert_state_dict(theirs.state_dict(), ours.state_dict(), version)
            ours.load_state_dict(state)
            x = torch.rand(2, 3, 256, 320, generator=g)
            text = torch.nn.functional.normalize(torch.randn(2, args.classes, 512, generator=g), dim=-1)
            theirs.model[-1].nc = args.classes
            with torch.no_grad():
                y, preds = theirs.predict(x, txt_feats=text)
                raw = ours(x, text)
                boxes, scores = ours.decode(raw)
            ref_boxes = xywh2xyxy(y[:, :4].transpose(1, 2))
            ref_scores = y[:, 4:].transpose(1, 2)
            print(
                f"{yaml.format(scale):<22} {len(report.loaded):>7} "
                f"{(preds['boxes'] - raw.box_logits).abs().max().item():>11.2e} "
                f"{(preds['scores'] - raw.cls_logits).abs().max().item():>11.2e} "
                f"{(ref_boxes - boxes).abs().max().item():>10.2e} {(ref_scores - scores).abs().max().item():>10.2e}"
                f" {scores.min().item():>7.4f}-{scores.max().item():.4f}"
            )


if __name__ == "__main__":
    main()
