"""``ovdet serve``'s HTTP API through FastAPI's TestClient, with the shipped ovdet-demo model on real
coco128 images: answers equal ``Detector.predict``; every limit, bad image and the API key get a
4xx that names the problem; micro-batching, the vocabulary LRU, the bounded queue and the timeout."""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from ovdet import Detections, Detector  # noqa: E402
from ovdet.config import ConfigError, PredictConfig, ServeConfig  # noqa: E402
from ovdet.data.images import ImageReadError, decode_image, decode_image_bytes  # noqa: E402
from ovdet.data.letterbox import letterbox, to_tensor  # noqa: E402
from ovdet.serve import create_app  # noqa: E402
from ovdet.serve.app import public_bind_warning  # noqa: E402
from ovdet.serve.engine import BatchEngine, Job  # noqa: E402
from ovdet.text.vocabulary import builtin_vocabulary  # noqa: E402
from tests.helpers import assert_same_detections, nms_ambiguities  # noqa: E402

CLASSES = ["person", "bus", "dog", "bowl", "car"]


@pytest.fixture(scope="module")
def det() -> Detector:
    return Detector.from_pretrained("ovdet-demo", device="cpu")


@pytest.fixture()
def client(det: Detector):
    with TestClient(create_app(det, ServeConfig(), model_name="ovdet-demo"), raise_server_exceptions=False) as c:
        yield c


def _files(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def _as_detections(result: dict) -> Detections:
    d = result["detections"]
    return Detections(
        boxes=torch.tensor([x["box"] for x in d]).reshape(-1, 4),
        scores=torch.tensor([x["score"] for x in d]),
        labels=torch.tensor([x["label"] for x in d], dtype=torch.int64),
        names=result["names"],
        image_size=tuple(result["image_size"]),
        path=result["path"],
    )


def _clear(det: Detector, paths: list[Path], names: list[str], conf: float, iou: float, n: int) -> list[Path]:
    """The first ``n`` images with boxes whose NMS decisions have a clear margin at (conf, iou)."""
    emb = det.encode(names)
    out = []
    for p in paths:
        with torch.inference_mode():
            x = to_tensor([letterbox(cv2.imread(str(p)), 640, stride=32)[0]])
            boxes, scores = det.model.decode(det.model(x, emb))
        if scores.amax() > conf + 0.05 and not nms_ambiguities(
            boxes[0], scores[0], conf, iou, score_tol=2e-4, ties=True
        ):
            out.append(p)
        if len(out) == n:
            return out
    raise AssertionError("not enough coco128 images without near-ties")


# ------------------------------------------------------------------------------------------ happy path
def test_detect_equals_detector_predict(det: Detector, client: TestClient, coco128_images: list[Path]) -> None:
    conf, iou = 0.3, 0.6
    paths = _clear(det, coco128_images[:40], CLASSES, conf, iou, 4)
    r = client.post("/v1/detect", files=_files(paths), data={"classes": ", ".join(CLASSES), "conf": conf, "iou": iou})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 4 and body["batch"]["images"] == 4
    assert set(body["timing"]) == {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] > 0
    ref = Detector.load(Path(__import__("ovdet").__file__).parent / "assets" / "ovdet-demo", device="cpu")
    ref.set_classes(CLASSES)
    expected = ref.predict([str(p) for p in paths], conf=conf, iou=iou)
    assert sum(len(e) for e in expected) >= 4, "the comparison needs boxes"
    for got, want, p in zip(body["results"], expected, paths):
        assert got["path"] == p.name and got["names"] == CLASSES
        assert got["image_size"] == list(want.image_size)
        assert set(got["detections"][0]) == {"box", "score", "label", "name"} if got["detections"] else True
        # the same field names as Detections.to_dict / predictions.json
        assert set(got) == set(want.to_dict())
        assert_same_detections(_as_detections(got), want, box_tol=5e-2, score_tol=2e-4)
        assert all(x["name"] == CLASSES[x["label"]] for x in got["detections"])


def test_json_base64_and_data_url_equal_multipart(client: TestClient, coco128_images: list[Path]) -> None:
    path = coco128_images[1]
    raw = path.read_bytes()
    form = client.post("/v1/detect", files=_files([path]), data={"classes": "person,car"}).json()
    plain = client.post("/v1/detect", json={"images": [base64.b64encode(raw).decode()], "classes": ["person", "car"]})
    url = client.post(
        "/v1/detect",
        json={
            "images": [{"data": "data:image/jpeg;base64," + base64.b64encode(raw).decode(), "name": "x/y/a.jpg"}],
            "classes": "person, car",
        },
    )
    assert plain.status_code == url.status_code == 200
    assert plain.json()["results"][0]["detections"] == form["results"][0]["detections"]
    assert url.json()["results"][0]["detections"] == form["results"][0]["detections"]
    assert url.json()["results"][0]["path"] == "a.jpg"  # a client's path is a label, reduced to its last part
    assert plain.json()["results"][0]["path"] == "image0"


def test_default_and_builtin_vocabularies(det: Detector, client: TestClient, coco128_images: list[Path]) -> None:
    files = _files([coco128_images[0]])
    default = client.post("/v1/detect", files=files).json()["results"][0]
    assert default["names"] == det.names and len(det.names) == 80
    coco = client.post("/v1/detect", files=files, data={"classes": "coco"}).json()["results"][0]
    assert coco["names"] == builtin_vocabulary("coco")
    listed = client.post("/v1/detect", files=files, data={"classes": json.dumps(["COCO"])}).json()["results"][0]
    assert listed["names"] == builtin_vocabulary("coco")  # a one-item list naming a built-in one
    info = client.get("/v1/model").json()
    assert info["default_classes"] == det.names and info["builtin_vocabularies"] == [
        "coco",
        "lvis",
        "objects365",
        "openimages",
    ]
    assert info["text_encoder"] == "open_clip:ViT-B-32:openai" and info["device"] == "cpu"
    assert info["architecture"]["version"] == 2 and info["architecture"]["parameters"] > 1_000_000


def test_builtin_vocabularies_in_python_and_cli(det: Detector) -> None:
    from ovdet.cli import read_classes

    assert len(read_classes("objects365")) == 365 and len(read_classes("lvis")) == 1203
    assert read_classes("Coco") == builtin_vocabulary("coco")
    assert read_classes("person, coco") == ["person", "coco"]  # only the whole string names a built-in one
    d = Detector.load(Path(__import__("ovdet").__file__).parent / "assets" / "ovdet-demo", device="cpu")
    d.set_classes("coco")
    assert d.names == builtin_vocabulary("coco")
    with pytest.raises(TypeError, match="single string"):
        d.set_classes("person")


def test_health_model_stats_and_docs(client: TestClient) -> None:
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["auth_required"] is False and health["queue_size"] == 64
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/v1/detect"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    assert {"/v1/health", "/v1/model", "/v1/stats"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200
    assert client.get("/nowhere").json() == {"error": "http_error", "detail": "Not Found"}


def test_page_is_self_contained(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    js = client.get("/static/app.js")
    css = client.get("/static/style.css")
    assert js.status_code == css.status_code == 200 and "javascript" in js.headers["content-type"]
    for text in (page.text, js.text, css.text):  # nothing fetched from elsewhere (works offline)
        assert "://" not in text
    assert 'id="detections"' in page.text and "/v1/detect" in js.text
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/index.py").status_code == 404


# ------------------------------------------------------------------------------------------ limits and bad input
def _png_header(width: int, height: int) -> bytes:
    """A tiny but well-formed PNG that declares width × height (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "status", "code", "words"),
    [
        (b"", 422, "invalid_image", "empty file (0 bytes)"),
        ("truncated", 422, "invalid_image", "truncated JPEG"),
        (b"this is not an image at all", 422, "invalid_image", "not a decodable image"),
        (_png_header(30000, 30000), 413, "too_many_pixels", "max_pixels"),
    ],
)
def test_bad_images_get_4xx_naming_the_problem(
    client: TestClient, coco128_images: list[Path], data: bytes | str, status: int, code: str, words: str
) -> None:
    if data == "truncated":
        raw = coco128_images[0].read_bytes()
        data = raw[: len(raw) // 2]
    r = client.post("/v1/detect", files=[("images", ("bad.jpg", data, "image/jpeg"))], data={"classes": "person"})
    assert r.status_code == status, r.text
    assert r.json()["error"] == code and words in r.json()["detail"] and "bad.jpg" in r.json()["detail"]
    assert "Traceback" not in r.text


def test_each_limit_has_its_own_4xx(det: Detector, coco128_images: list[Path]) -> None:
    cfg = ServeConfig(max_upload_bytes=300_000, max_images=2, max_classes=3, max_name_length=20, max_imgsz=640)
    small = coco128_images[0]
    with TestClient(create_app(det, cfg), raise_server_exceptions=False) as c:

        def post(files=None, **data):
            return c.post("/v1/detect", files=files or _files([small]), data=data)

        big = np.random.default_rng(0).integers(0, 255, (700, 700, 3), dtype=np.uint8)
        big_png = cv2.imencode(".png", big)[1].tobytes()
        assert len(big_png) > cfg.max_upload_bytes
        cases = [
            (post(files=[("images", ("big.png", big_png, "image/png"))]), 413, "max_upload_bytes"),
            (post(files=_files([small] * 3)), 422, "max_images"),
            (post(classes="a,b,c,d"), 422, "max_classes"),
            (post(classes="person," + "x" * 21), 422, "max_name_length"),
            (post(classes="person", imgsz="1280"), 422, "max_imgsz"),
            (post(classes="person", imgsz="100"), 422, "multiple of 32"),
            (post(classes="person", conf="1.5"), 422, "conf"),
            (post(classes="person", conf="abc"), 422, "conf must be a number"),
            (post(classes="person", max_det="0"), 422, "max_det"),
            (post(classes="person,person"), 422, "duplicate"),
            (post(classes=" , "), 422, "no class names"),
            (c.post("/v1/detect", data={"classes": "person"}), 422, "no image"),
            (c.post("/v1/detect", content=b"raw", headers={"content-type": "image/jpeg"}), 415, "multipart"),
            (c.post("/v1/detect", content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON"),
        ]
        for r, status, words in cases:
            assert r.status_code == status, (words, r.text)
            if words:
                assert words in r.json()["detail"], r.json()
                assert "Traceback" not in r.text


def test_no_default_vocabulary_needs_classes(coco128_images: list[Path]) -> None:
    bare = Detector.from_config(Path(__file__).parents[1] / "configs" / "models" / "yolo-world-tiny.yaml", device="cpu")
    with TestClient(create_app(bare), raise_server_exceptions=False) as c:
        r = c.post("/v1/detect", files=_files([coco128_images[0]]))
        assert r.status_code == 422 and r.json()["error"] == "no_classes"


def test_never_fetches_urls_or_reads_server_paths(client: TestClient, coco128_images: list[Path]) -> None:
    for ref in ("https://example.com/a.jpg", "file:///etc/passwd", "ftp://host/x.png"):
        r = client.post("/v1/detect", json={"images": [ref], "classes": ["person"]})
        assert r.status_code == 422 and "never fetches URLs" in r.json()["detail"]
    # an existing image on the server, named by path: never opened (not base64 → 422)
    for ref in (str(coco128_images[0]), str(coco128_images[0].resolve())):
        r = client.post("/v1/detect", json={"images": [ref], "classes": ["person"]})
        assert r.status_code == 422, r.text
    r = client.post("/v1/detect", json={"images": [{"path": str(coco128_images[0])}]})
    assert r.status_code == 422


def test_api_key(det: Detector, coco128_images: list[Path]) -> None:
    key = "s3cret-key-123"
    with TestClient(create_app(det, ServeConfig(api_key=key)), raise_server_exceptions=False) as c:
        files = _files([coco128_images[0]])
        assert c.get("/v1/health").json()["auth_required"] is True  # public, for load balancers
        assert c.get("/").status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": key + "x"}, {"Authorization": "Bearer nope"}):
            r = c.post("/v1/detect", files=files, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["detail"]
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/model").status_code == 401 and c.get("/v1/stats").status_code == 401
        assert c.post("/v1/detect", files=files, headers={"X-API-Key": key}).status_code == 200
        assert c.post("/v1/detect", files=files, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert c.get("/v1/model", headers={"X-API-Key": key}).status_code == 200
    with pytest.raises(ConfigError, match="at least 8"):
        ServeConfig(api_key="short")


def test_public_bind_warning() -> None:
    assert public_bind_warning(ServeConfig(host="127.0.0.1")) is None
    assert public_bind_warning(ServeConfig(host="::1")) is None
    assert public_bind_warning(ServeConfig(host="localhost")) is None
    assert "without an API key" in public_bind_warning(ServeConfig(host="0.0.0.0"))
    assert "without an API key" in public_bind_warning(ServeConfig(host="my-host.example"))
    assert public_bind_warning(ServeConfig(host="0.0.0.0", api_key="a-long-key")) is None


def test_cors_off_by_default_and_configurable(det: Detector) -> None:
    origin = {"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(det)) as c:
        assert "access-control-allow-origin" not in c.get("/v1/health", headers=origin).headers
        assert "access-control-allow-origin" not in c.options("/v1/detect", headers=origin).headers
    with TestClient(create_app(det, ServeConfig(cors_origins=("http://elsewhere.example",)))) as c:
        assert c.options("/v1/detect", headers=origin).headers["access-control-allow-origin"] == origin["Origin"]
        assert "access-control-allow-origin" not in c.get("/v1/health", headers={"Origin": "http://other"}).headers


def test_internal_errors_do_not_leak(det: Detector, coco128_images: list[Path], monkeypatch) -> None:
    app = create_app(det)

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals at /srv/model")

    monkeypatch.setattr(app.state.engine.vocab, "folded", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/detect", files=_files([coco128_images[0]]), data={"classes": "person"})
        assert r.status_code == 500 and r.json()["error"] == "internal"
        assert "secret" not in r.text and "Traceback" not in r.text and "reference" in r.json()["detail"]
        assert c.post("/v1/detect", files=_files([coco128_images[0]])).status_code == 500  # the worker lives on
        monkeypatch.undo()
        assert c.post("/v1/detect", files=_files([coco128_images[0]])).status_code == 200


# ------------------------------------------------------------------------------------------ queue, timeout, batching
def test_timeout_gives_504(det: Detector, coco128_images: list[Path]) -> None:
    with TestClient(create_app(det, ServeConfig(timeout_s=0.001)), raise_server_exceptions=False) as c:
        r = c.post("/v1/detect", files=_files([coco128_images[0]]), data={"classes": "person"})
        assert r.status_code == 504 and "timeout_s" in r.json()["detail"]


def test_full_queue_gives_503_with_retry_after(det: Detector, coco128_images: list[Path], monkeypatch) -> None:
    app = create_app(det, ServeConfig(queue_size=1))
    engine = app.state.engine
    release = threading.Event()
    real = engine.vocab.embeddings

    def slow(names):
        release.wait(30)
        return real(names)

    monkeypatch.setattr(engine.vocab, "embeddings", slow)
    with TestClient(app, raise_server_exceptions=False) as c:
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=c.post("/v1/detect", files=_files([coco128_images[0]]))))
        t.start()
        deadline = time.time() + 30
        while engine.inflight < 1 and time.time() < deadline:
            time.sleep(0.01)
        r = c.post("/v1/detect", files=_files([coco128_images[1]]))
        assert r.status_code == 503 and r.json()["error"] == "busy" and "queue_size" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        release.set()
        t.join(60)
        assert first["r"].status_code == 200
        assert c.post("/v1/detect", files=_files([coco128_images[1]])).status_code == 200
        assert c.get("/v1/stats").json()["rejected"] == 1


def _job(image: np.ndarray, names: list[str], i: int) -> Job:
    return Job([image], [f"im{i}"], tuple(names), PredictConfig(conf=0.3, iou=0.6))


def test_engine_micro_batches_same_key_only(det: Detector, coco128_images: list[Path]) -> None:
    # four same-shape images of two vocabularies, submitted together: two batches of two; each
    # image has boxes and no NMS near-tie at (0.3, 0.6) for its vocabulary
    vocab_a, vocab_b = ["person", "car"], ["dog", "bowl", "bus"]
    shape = decode_image(coco128_images[0]).shape
    pool = [p for p in coco128_images if cv2.imread(str(p)).shape == shape]
    a, b = _clear(det, pool, vocab_a, 0.3, 0.6, 2), _clear(det, pool, vocab_b, 0.3, 0.6, 2)
    images = [decode_image(p) for p in (a[0], b[0], a[1], b[1])]
    engine = BatchEngine(det, ServeConfig(batch_window_ms=500, max_batch=8))
    engine.warmup(320)
    engine.start()
    try:
        jobs = [_job(im, vocab_a if i % 2 == 0 else vocab_b, i) for i, im in enumerate(images)]
        futures = [engine.submit(j) for j in jobs]
        results = [f.result(60) for f in futures]
    finally:
        engine.stop()
    assert [r.batch_requests for r in results] == [2, 2, 2, 2]
    stats = engine.stats()
    assert stats["batches"] == 2 and stats["mean_batch_requests"] == 2.0 and stats["requests"] == 4
    assert all(job.images == [] for job in jobs)  # the worker let go of the arrays once they had run
    for job, image, res in zip(jobs, images, results):
        ref = Detector.load(Path(__import__("ovdet").__file__).parent / "assets" / "ovdet-demo", device="cpu")
        ref.set_classes(list(job.names))
        want = ref.predict(image, conf=0.3, iou=0.6)[0]
        assert res.detections[0].names == list(job.names)
        assert len(res.detections[0]) == len(want)
        if len(want):
            torch.testing.assert_close(res.detections[0].scores, want.scores, atol=2e-4, rtol=0)


def test_vocabulary_lru(det: Detector) -> None:
    engine = BatchEngine(det, ServeConfig(vocab_cache=2, folded_cache=1))
    store = engine.vocab
    a, b, c = ("person",), ("dog",), ("bus", "car")
    ea = store.embeddings(a)
    assert store.embeddings(a) is ea and (store.hits, store.misses) == (1, 1)
    store.embeddings(b)
    store.embeddings(c)  # evicts a (least recently used)
    assert len(store) == 2 and a not in store._embeddings
    store.embeddings(a)
    assert store.misses == 4
    fa = store.folded(a, store.embeddings(a))
    assert store.folded(a, store.embeddings(a)) is fa  # kept
    store.folded(c, store.embeddings(c))  # folded_cache=1: a's copy is dropped
    assert store.folded(a, store.embeddings(a)) is not fa
    default = store.embeddings(tuple(det.names))  # the default vocabulary: the detector's own rows
    torch.testing.assert_close(default, det.class_embeddings)


def test_decode_image_bytes_equals_decode_image(coco128_images: list[Path]) -> None:
    path = coco128_images[5]
    assert np.array_equal(decode_image_bytes(path.read_bytes(), "x", capture=False), decode_image(path))
    with pytest.raises(ImageReadError, match="^upload 3: empty file"):
        decode_image_bytes(b"", "upload 3")


def test_serve_command_line_checks_before_loading(capsys: pytest.CaptureFixture) -> None:
    from ovdet.cli import main

    for argv, words in [
        (["serve", "--model", "ovdet-demo", "--port", "70000"], "serve.port"),
        (["serve", "--model", "ovdet-demo", "--api-key", "short"], "at least 8"),
        (["serve", "--model", "ovdet-demo", "--queue-size", "0"], "serve.queue_size"),
        (["serve", "--model", "no-such-model"], "--model"),
    ]:
        assert main(argv) == 2
        assert words in capsys.readouterr().err
