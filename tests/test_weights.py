"""Pretrained weights: download once, convert once, then offline forever; never unpickle untrusted files.

The "official" files are ultralytics models built offline from YAML with random weights and
saved the way ultralytics saves release checkpoints (the fp16 module under ``"model"``). They
are served by a local ``http.server`` on 127.0.0.1 — no other address is ever contacted
(``YOLO_OFFLINE=1`` stops ultralytics' DNS "is online" probe after a failed download).

There is no official ``yolov8n-worldv2.pt``, so the n-scale fake is served under the name of
``yolo-world-v2-s`` (``yolov8s-worldv2.pt``); conversion reads the scale from the model itself.
"""

from __future__ import annotations

import http.server
import inspect
import json
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("ultralytics")
from ultralytics.nn.tasks import DetectionModel, WorldModel  # noqa: E402
from ultralytics.utils import downloads as ul_downloads  # noqa: E402

from ovdet import Detector  # noqa: E402
from ovdet import weights as ow  # noqa: E402
from ovdet.cli import UsageError, check_model_spec, main  # noqa: E402
from ovdet.weights import (  # noqa: E402
    DEFAULT_WEIGHTS_URL,
    PRETRAINED,
    UntrustedCheckpointError,
    WeightsUnavailable,
    fetch_pretrained,
    pretrained_url,
    ultralytics_name,
)
from tests.helpers import save_like_ultralytics  # noqa: E402

WORLD_NAME, WORLD_FILE = "yolo-world-v2-s", "yolov8s-worldv2.pt"


@dataclass
class Official:
    """A folder of fake official files and the fp16→fp32 weights they hold."""

    dir: Path
    world_state: dict[str, torch.Tensor]  # ultralytics keys of yolov8s-worldv2.pt (an n-scale v2 model)
    det_state: dict[str, torch.Tensor]  # ultralytics keys of yolov8n.pt (a plain detector)

    @property
    def file_url(self) -> str:
        return self.dir.as_uri()


@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> Official:
    root = tmp_path_factory.mktemp("official")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        world = WorldModel("yolov8n-worldv2.yaml", verbose=False).eval()
        det = DetectionModel("yolov8n.yaml", verbose=False).eval()
    save_like_ultralytics(world, root / WORLD_FILE)
    save_like_ultralytics(det, root / "yolov8n.pt")
    as_saved = {k: v.half().float() if v.is_floating_point() else v for k, v in world.state_dict().items()}
    det_saved = {k: v.half().float() if v.is_floating_point() else v for k, v in det.state_dict().items()}
    return Official(root, as_saved, det_saved)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """OVDET_HOME in tmp, no weights-URL override, no proxies, no DNS probing by ultralytics."""
    home = tmp_path / "home"
    monkeypatch.setenv("OVDET_HOME", str(home))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.delenv("OVDET_WEIGHTS_URL", raising=False)
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return home


class Server:
    """A static file server on 127.0.0.1 that records the paths of the GET requests it answers."""

    def __init__(self, directory: Path, truncate: bool = False) -> None:
        self.gets: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.gets.append(self.path)
                if not truncate:
                    return super().do_GET()
                body = (directory / self.path.lstrip("/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])  # then the connection closes: an interrupted download
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(directory: Path, truncate: bool = False) -> Server:
        servers.append(Server(directory, truncate))
        return servers[-1]

    yield start
    for s in servers:
        if s._thread.is_alive():
            s.close()


def closed_port_url() -> str:
    """A loopback URL nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def assert_matches_source(det: Detector, source: dict[str, torch.Tensor], keys: list[str] | None = None) -> None:
    """ovdet tensors equal the (fp16→fp32) ultralytics tensors they were converted from, exactly."""
    ours = det.model.state_dict()
    for k in keys if keys is not None else list(ours):
        theirs = source[ultralytics_name(k, 2)]
        assert torch.equal(ours[k].cpu(), theirs.to(ours[k].dtype)), k


# ---------------------------------------------------------------------------------------------- the name table
def test_table_lists_only_official_assets_and_default_url_is_ultralytics_release() -> None:
    assert set(PRETRAINED.values()) <= ul_downloads.GITHUB_ASSETS_NAMES
    for s in "nsmlx":  # a name is present exactly when ultralytics publishes its file
        assert (f"yolo-world-v2-{s}" in PRETRAINED) == (f"yolov8{s}-worldv2.pt" in ul_downloads.GITHUB_ASSETS_NAMES)
        assert (f"yolo-world-v1-{s}" in PRETRAINED) == (f"yolov8{s}-world.pt" in ul_downloads.GITHUB_ASSETS_NAMES)
        assert PRETRAINED[f"yolov8{s}"] == f"yolov8{s}.pt"
    release = inspect.signature(ul_downloads.attempt_download_asset).parameters["release"].default
    assert f"https://github.com/{ul_downloads.GITHUB_ASSETS_REPO}/releases/download/{release}" == DEFAULT_WEIGHTS_URL


def test_url_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    assert pretrained_url(WORLD_NAME) == f"{DEFAULT_WEIGHTS_URL}/{WORLD_FILE}"
    monkeypatch.setenv("OVDET_WEIGHTS_URL", "http://127.0.0.1:9/mirror/")
    assert pretrained_url(WORLD_NAME) == f"http://127.0.0.1:9/mirror/{WORLD_FILE}"
    assert pretrained_url("yolov8m", base_url="file:///w") == "file:///w/yolov8m.pt"


def test_unknown_name_suggests_closest(isolated_home: Path) -> None:
    with pytest.raises(ValueError, match="did you mean 'yolo-world-v2-s'") as ei:
        fetch_pretrained("yolo-world-v2-ss")
    assert "yolov8x" in str(ei.value)  # the valid names are listed
    with pytest.raises(ValueError, match="unknown pretrained model 'yolo_world_v1_m'.*'yolo-world-v1-m'"):
        Detector.from_pretrained("yolo_world_v1_m")
    assert not isolated_home.exists()  # nothing touched on disk


# ---------------------------------------------------------------------------------------------- download + cache
def test_download_convert_cache_then_offline(
    official: Official, serve, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(official.dir)
    monkeypatch.setenv("OVDET_WEIGHTS_URL", server.url)
    det = Detector.from_pretrained(WORLD_NAME, device="cpu")
    assert server.gets == [f"/{WORLD_FILE}"]
    model_dir = isolated_home / "models" / WORLD_NAME
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    assert sorted(p.name for p in (isolated_home / "downloads").iterdir()) == [WORLD_FILE]  # no temp left
    assert sorted(p.name for p in (isolated_home / "models").iterdir()) == [WORLD_NAME]
    assert_matches_source(det, official.world_state)  # every tensor, exactly

    # Second call: server gone, unpickling forbidden → only the safetensors cache can serve it.
    server.close()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load called on a cached pretrained model")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    again = Detector.from_pretrained(WORLD_NAME, device="cpu")
    assert server.gets == [f"/{WORLD_FILE}"]
    ours, theirs = det.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_offline_fails_fast_and_says_what_to_do(isolated_home: Path) -> None:
    base = closed_port_url()
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as ei:
        fetch_pretrained(WORLD_NAME, base_url=base)
    assert time.perf_counter() - start < 20
    msg = str(ei.value)
    target = isolated_home / "downloads" / WORLD_FILE
    assert str(target) in msg and f"{base}/{WORLD_FILE}" in msg
    assert "from_ultralytics" in msg and "--trust" in msg
    assert list((isolated_home / "downloads").iterdir()) == []
    assert not (isolated_home / "models").exists()


def test_no_network_default_url_message(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No DNS/route at all (simulated: nothing leaves this machine): the official URL is named."""

    def unreachable(address, *args, **kwargs):
        raise socket.gaierror(-3, f"Temporary failure in name resolution ({address[0]})")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(WeightsUnavailable, match="name resolution") as ei:
        Detector.from_pretrained("yolov8x")
    msg = str(ei.value)
    assert f"{DEFAULT_WEIGHTS_URL}/yolov8x.pt" in msg and str(isolated_home / "downloads" / "yolov8x.pt") in msg


def test_http_404_is_unavailable_without_retry_storm(serve, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    server = serve(empty)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match="404"):
        fetch_pretrained(WORLD_NAME, base_url=server.url)
    assert time.perf_counter() - start < 20
    assert server.gets == [f"/{WORLD_FILE}"]  # a 4xx is final: no retry


def test_file_put_by_hand_is_used_without_network(
    official: Official, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloads = isolated_home / "downloads"
    downloads.mkdir(parents=True)
    (downloads / WORLD_FILE).write_bytes((official.dir / WORLD_FILE).read_bytes())

    def no_network(url: str, dest: Path) -> None:
        raise AssertionError(f"network used for {url}")

    monkeypatch.setattr(ow, "_fetch", no_network)
    det = Detector.from_pretrained(WORLD_NAME, device="cpu", base_url=closed_port_url())
    assert_matches_source(
        det,
        official.world_state,
        ["backbone.stem.conv.weight", "head.contrast.2.bias", "neck.bottom_up_p5.attn.guide.weight"],
    )


def test_interrupted_download_leaves_no_file_with_the_final_name(
    official: Official, serve, isolated_home: Path
) -> None:
    downloads = isolated_home / "downloads"
    downloads.mkdir(parents=True)
    stale = downloads / f".{WORLD_FILE}.0123abcd.tmp"  # what a killed earlier run may leave
    stale.write_bytes(b"PK\x03\x04 half a file")
    server = serve(official.dir, truncate=True)
    with pytest.raises(WeightsUnavailable, match=WORLD_FILE):
        fetch_pretrained(WORLD_NAME, base_url=server.url)
    assert server.gets and set(server.gets) == {f"/{WORLD_FILE}"}
    assert sorted(p.name for p in downloads.iterdir()) == [stale.name]  # no partial body, no final name
    assert not (isolated_home / "models").exists()

    good = serve(official.dir)  # the next attempt downloads afresh (the stale temp file is not mistaken)
    out = fetch_pretrained(WORLD_NAME, base_url=good.url)
    assert_matches_source(Detector.load(out, device="cpu"), official.world_state, ["head.contrast.0.bias"])


def test_file_url_plain_yolov8_init_and_incomplete_cache_dir(official: Official, isolated_home: Path) -> None:
    leftover = isolated_home / "models" / "yolov8n"
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{}")  # no weights: not a usable cache entry
    out = fetch_pretrained("yolov8n", base_url=official.file_url)
    assert out == leftover and (out / "model.safetensors").is_file()
    det = Detector.load(out, device="cpu")
    backbone = [k for k in det.model.state_dict() if k.startswith("backbone.")]
    assert_matches_source(det, official.det_state, backbone + ["head.box_branches.0.0.conv.weight"])
    report = json.loads((out / "config.json").read_text())["converted_from"]
    assert report["name"] == "yolov8n" and report["source_file"] == "yolov8n.pt"
    assert {"head.contrast.0", "head.contrast.1", "head.contrast.2"} <= set(report["missing_modules"])
    assert not any(m.startswith("backbone") for m in report["missing_modules"])


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_convert_needs_trust_and_reports_random_parts(
    official: Official, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pt, out = official.dir / "yolov8n.pt", tmp_path / "converted"
    assert main(["convert", str(pt), str(out)]) == 2
    assert "--trust" in capsys.readouterr().err
    assert not out.exists()

    assert main(["convert", str(pt), str(out), "--trust"]) == 0
    printed = capsys.readouterr().out
    assert "head.contrast.0" in printed and "head.embed_branches.2" in printed and "backbone" not in printed
    det = Detector.load(out, device="cpu")
    assert_matches_source(det, official.det_state, ["backbone.sppf.project.conv.weight"])

    report = Detector.from_ultralytics(pt, trust=True, device="cpu").conversion_report
    state = det.model.state_dict()
    for i in range(3):
        assert all(k in report.missing for k in state if k.startswith(f"head.contrast.{i}."))
        assert f"head.embed_branches.{i}.2.weight" in report.missing  # last embed conv: 80 classes → D
        assert f"head.embed_branches.{i}.0.conv.weight" in report.loaded
        assert f"head.contrast.{i}" in report.missing_modules()
    backbone = [k for k in state if k.startswith("backbone.")]
    assert backbone and all(k in report.loaded for k in backbone)


def test_cli_predict_accepts_pretrained_name(
    official: Official, tmp_path: Path, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    from ovdet.text import save_embeddings

    monkeypatch.setenv("OVDET_WEIGHTS_URL", official.file_url)
    emb = torch.nn.functional.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(0)), dim=-1)
    save_embeddings(tmp_path / "emb.safetensors", ["cat", "dog"], emb, "test", ("{}",))
    image = tmp_path / "img.jpg"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    rc = main(
        [
            "predict",
            "--model",
            WORLD_NAME,
            "--embeddings",
            str(tmp_path / "emb.safetensors"),
            "--source",
            str(image),
            "--save-dir",
            str(tmp_path / "run"),
            "--imgsz",
            "128",
            "--device",
            "cpu",
            "--no-save-images",
            "--quiet",
        ]
    )
    assert rc == 0
    assert json.loads((tmp_path / "run" / "predictions.json").read_text())["names"] == ["cat", "dog"]
    assert (isolated_home / "models" / WORLD_NAME / "model.safetensors").is_file()
    with pytest.raises(UsageError, match="did you mean the pretrained model 'yolo-world-v2-s'"):
        check_model_spec("yolo-world-v2s")


# ---------------------------------------------------------------------------------------------- untrusted pickles
class _TouchOnLoad:
    """Unpickling this creates a file: a harmless stand-in for code execution from a .pt."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_never_unpickled_without_trust(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ovdet.weights import ConversionError, read_ultralytics_checkpoint

    marker, pt = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"model": _TouchOnLoad(marker), "date": "x"}, pt)
    assert not marker.exists()

    with pytest.raises(UntrustedCheckpointError, match="trust=True"):
        Detector.from_ultralytics(pt)
    assert not marker.exists()
    assert main(["convert", str(pt), str(tmp_path / "out")]) == 2
    assert "arbitrary code" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()

    # Control: the payload is live — trusting the file runs it (so the checks above can fail).
    with pytest.raises(ConversionError, match="no model inside"):
        read_ultralytics_checkpoint(pt, trust=True)
    assert marker.exists()
    os.remove(marker)
