"""Run the side-by-side benchmarks and regenerate the README's performance table.

Runs ``bench_predict.py`` (forward, end-to-end predict, ``set_classes``, video memory) and
``bench_loader.py`` (training loader with and without the RAM cache), each in its own process
with nothing else of ours running, then writes the table between the
``<!-- benchmarks:begin -->`` / ``<!-- benchmarks:end -->`` markers of README.md, stating the
machine. GPU rows say "not yet measured" unless ``--device cuda:0`` ran them.

    python benchmarks/run_all.py                  # CPU rows, rewrites README.md
    python benchmarks/run_all.py --no-readme      # print the table only
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"


def run(script: str, args: list[str], out: Path) -> dict:
    """Run one benchmark script with ``--json out`` and return what it wrote."""
    cmd = [sys.executable, str(HERE / script), *args, "--json", str(out)]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def _find(rows: list[dict], **match) -> dict:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            return r
    raise KeyError(f"no benchmark row {match}")


def table(predict: dict, loader: dict | None, gpu: dict | None) -> str:
    """The README table (markdown) from the benchmarks' JSON results."""
    rows = predict["rows"]
    lines = [
        "| figure | ovdet | ultralytics | ovdet ÷ ultralytics | target | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def time_row(label: str, figure: str, batch: int, target: float, ours: str = "ovdet") -> None:
        a, b = (
            _find(rows, figure=figure, batch=batch, row=ours),
            _find(rows, figure=figure, batch=batch, row="ultralytics"),
        )
        ratio = a["ms"] / b["ms"]
        lines.append(
            f"| {label} | {a['ms']:.1f} ms/img (±{a['spread_ms'] / 2:.0f}) | {b['ms']:.1f} ms/img (±{b['spread_ms'] / 2:.0f}) "
            f"| **{ratio:.2f}** (time) | ≤ {target} | {'yes' if ratio <= target else 'no'} |"
        )

    fwd = "ovdet (predict's network)"
    layout = predict.get("ultralytics_layout", "NCHW")
    for b in sorted({r["batch"] for r in rows if r["figure"] == "forward"}):
        time_row(
            f"CPU forward, v2-s 640, batch {b}, fused (ultralytics: the network `YOLO.predict` runs, {layout})",
            "forward",
            b,
            0.8,
            fwd,
        )
        ref = _find(rows, figure="forward", batch=b, row="ultralytics")
        a = _find(rows, figure="forward", batch=b, row="ovdet (network as is)")
        lines.append(
            f"| … ovdet without folding/channels-last (`optimize=False`) | {a['ms']:.1f} ms/img | "
            f"{ref['ms']:.1f} ms/img | {a['ms'] / ref['ms']:.2f} | — | — |"
        )
        if layout != "NCHW":  # what ultralytics ran before its predictor went channels-last (8.4)
            ours = _find(rows, figure="forward", batch=b, row=fwd)
            nchw = _find(rows, figure="forward", batch=b, row="ultralytics (NCHW module)")
            lines.append(
                f"| … ovdet vs ultralytics' WorldModel in NCHW | {ours['ms']:.1f} ms/img | {nchw['ms']:.1f} ms/img "
                f"| {ours['ms'] / nchw['ms']:.2f} | — | — |"
            )
    for b in sorted({r["batch"] for r in rows if r["figure"] == "e2e"}):
        time_row(f"CPU end-to-end `predict` over coco128 files, v2-s 640, batch {b}", "e2e", b, 0.6)
    if loader:
        base = loader["rates"]["ultralytics"]
        for name, target in (("ovdet cache=ram", 1.5), ("ovdet cache=None", 1.0)):
            rate = loader["rates"][name]
            label = 'with `cache="ram"`' if "ram" in name else "no cache (the default 256 MiB decode buffer per worker)"
            label += f", steady state (after {loader['warmup']} warm-up epochs)"
            lines.append(
                f"| training loader, mosaic {loader['imgsz']}, batch {loader['batch']}, {loader['workers']} workers, "
                f"{label} | {rate:.1f} img/s | {base:.1f} img/s | **{base / rate:.2f}** (time; {rate / base:.2f}× the "
                f"images/s) | ≥ {target}× images/s | {'yes' if rate / base >= target else 'no'} |"
            )
        if "ovdet no buffer" in loader["rates"]:
            rate = loader["rates"]["ovdet no buffer"]
            lines.append(
                f"| … no cache and `buffer_mb=0` (every image decoded every time) | {rate:.1f} img/s | {base:.1f} img/s "
                f"| {base / rate:.2f} (time; {rate / base:.2f}× the images/s) | — | — |"
            )
    sc = _find(rows, figure="set_classes", row="cached (memory)")
    disk = _find(rows, figure="set_classes", row="cached (file)")
    lines.append(
        f"| `set_classes` with the 1203 LVIS names, embeddings cached | {sc['ms']:.1f} ms "
        f"({disk['ms']:.0f} ms from the cache file in a new process) | — | — | ≤ 20 ms | {'yes' if sc['ms'] <= 20 else 'no'} |"
    )
    try:
        v = _find(rows, figure="video")
        lines.append(
            f"| `predict(stream=True)` over {v['frames']} video frames (ovdet-demo, 320) | RSS growth after frame 100: "
            f"{v['growth_mb']:.1f} MiB (peak {v['peak_rss_mb']:.0f} MiB, {v['fps']:.1f} fps) | — | — | ≤ 50 MiB | "
            f"{'yes' if v['growth_mb'] <= 50 else 'no'} |"
        )
    except KeyError:
        pass
    if gpu is None:
        lines.append(
            "| GPU end-to-end throughput, v2-s 640, batch 64, fp16/bf16 | not yet measured | — | — | ≥ 1.5× | — |"
        )
        lines.append("| GPU batch-1 latency, v2-s | not yet measured | — | — | ≤ 5 ms | — |")
    else:
        for r in gpu["rows"]:
            if r.get("row") == "ovdet" and r["figure"] in ("forward", "e2e"):
                ref = _find(gpu["rows"], figure=r["figure"], batch=r["batch"], row="ultralytics")
                lines.append(
                    f"| GPU {r['figure']}, batch {r['batch']}, {gpu['precision']} | {r['ms']:.2f} ms/img | {ref['ms']:.2f} "
                    f"ms/img | {r['ms'] / ref['ms']:.2f} | see issue | — |"
                )
    when = datetime.date.today().isoformat()
    lines.append("")
    lines.append(
        f"Measured {when} by `python benchmarks/run_all.py` on {predict['machine']}"
        + (f"; GPU: {gpu['machine']}" if gpu else "; no GPU was available")
        + ". Ratios are medians of interleaved rounds in one process (lower is better for time); the "
        "± values are half the spread of the rounds."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="shared data root (default $OVDET_DATA or ../shared/data)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--loader-epochs", type=int, default=5, help="epochs per timed loader span")
    ap.add_argument("--loader-rounds", type=int, default=3, help="timed spans per loader")
    ap.add_argument("--device", default=None, help="also run the GPU rows on this CUDA device")
    ap.add_argument("--readme", type=Path, default=HERE.parent / "README.md")
    ap.add_argument("--no-readme", action="store_true", help="print the table, leave README.md alone")
    args = ap.parse_args()
    data = ["--data", args.data] if args.data else []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        predict = run("bench_predict.py", [*data, "--rounds", str(args.rounds)], out / "predict.json")
        loader = run(
            "bench_loader.py",
            [*data, "--epochs", str(args.loader_epochs), "--rounds", str(args.loader_rounds)],
            out / "loader.json",
        )
        gpu = None
        if args.device:
            gpu = run(
                "bench_predict.py",
                [*data, "--device", args.device, "--precision", "fp16", "--batches", "1,64", "--e2e-batches", "1,64"]
                + ["--skip", "set_classes,video", "--rounds", str(args.rounds)],
                out / "gpu.json",
            )
    text = table(predict, loader, gpu)
    print("\n" + text)
    if args.no_readme:
        return
    readme = args.readme.read_text()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{args.readme} has no {BEGIN} … {END} markers")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"\nwrote the table into {args.readme}")


if __name__ == "__main__":
    main()
