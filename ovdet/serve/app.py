"""The HTTP API and web page: ``create_app(detector, cfg)`` → a FastAPI app.

Endpoints:

* ``POST /v1/detect`` — multipart (``images`` files, ``classes``, ``conf``, ``iou``, ``imgsz``,
  ``max_det``, ``agnostic_nms`` fields) or JSON (``{"images": [base64, ...], "classes": [...]}``)
  → one ``Detections.to_dict()`` per image, plus timing and the batch it ran in.
* ``GET /v1/health`` (no key needed), ``GET /v1/model``, ``GET /v1/stats``.
* ``GET /`` — the page (``static/``: plain HTML/JS/CSS, nothing fetched from elsewhere).

Every error is JSON ``{"error": code, "detail": message}`` with a 4xx/5xx status and never a
traceback. Memory is bounded before it is used: JSON's nesting and numbers on the text before
parsing, each request's decoded images on their headers before decoding
(``max_request_decoded_bytes``), and bodies and images in flight across the server by a
:class:`~ovdet.serve.budget.MemoryBudget` (``memory_budget_bytes``). Images arrive as bytes only:
the server never fetches a URL or opens a path a client names.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from ovdet._version import __version__
from ovdet.config import SERVE_BODY_COPIES, ConfigError, PredictConfig, ServeConfig
from ovdet.data.images import ImageReadError, declared_size, decode_image_bytes
from ovdet.serve.budget import BYTES_PER_PIXEL, MemoryBudget, Reservation, decoded_bytes
from ovdet.serve.engine import BatchEngine, Job, JobResult, QueueFull, ServableDetector, VocabularyError
from ovdet.text import TextEncoderUnavailable, text_encoder_id, validate_class_names
from ovdet.text.vocabulary import BUILTIN_VOCABULARIES, is_builtin_vocabulary, parse_class_spec

__all__ = ["ApiError", "create_app", "public_bind_warning"]

log = logging.getLogger("ovdet.serve")

#: Content-Security-Policy of the page: its own scripts and styles only, images from blobs.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
_STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^file:", re.ASCII)
#: How long a request waits for room in the memory budget before 503, seconds.
_BUDGET_WAIT_S = 2.0
#: JSON read from a client: nesting, arrays/objects and digits of an integer at most (a valid
#: request nests 3 deep and holds a few dozen arrays/objects).
_JSON_MAX_DEPTH = 32
_JSON_MAX_CONTAINERS = 4096
_JSON_MAX_DIGITS = 64
_JSON_TOKEN = re.compile(rb'"([^"]*)"(\s*:)?|[\[{]|[\]}]|"')


class ApiError(Exception):
    """An error answer: HTTP ``status``, a short machine-readable ``code`` and a message in words."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers


def public_bind_warning(cfg: ServeConfig) -> str | None:
    """The warning to print when ``cfg`` binds a non-loopback address with no API key, else None."""
    host = cfg.host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback or cfg.api_key is not None:
        return None
    return (
        f"serving on {cfg.host} without an API key: anyone who can reach port {cfg.port} can use the model; "
        "set $OVDET_API_KEY (or --api-key), or bind 127.0.0.1"
    )


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


# ------------------------------------------------------------------------------------------ request parsing
def _declared_length(request: Request, limit: int) -> int | None:
    """The body length ``Content-Length`` declares (None without one); 413 above ``limit``."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        return None
    if int(declared) > limit:
        raise ApiError(
            413,
            "upload_too_large",
            f"the request body is {int(declared):,} bytes; the limit is {limit:,} (max_upload_bytes)",
        )
    return int(declared)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes (whatever
    ``Content-Length`` claims)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(
                413, "upload_too_large", f"the request body is over the limit of {limit:,} bytes (max_upload_bytes)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class _LongNumber:
    """A JSON integer with more than ``_JSON_MAX_DIGITS`` digits, not converted (Python refuses
    over 4,300 digits, and floats overflow far sooner): kept so that the field holding it is named."""

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))


def _json_int(text: str) -> int | _LongNumber:
    return _LongNumber(text) if len(text) > _JSON_MAX_DIGITS else int(text)


def _shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _check_json_shape(raw: bytes, what: str, max_strings: int, status: int, code: str) -> None:
    """Refuse JSON text that nests deeper than ``_JSON_MAX_DEPTH``, or holds more than
    ``_JSON_MAX_CONTAINERS`` arrays/objects or ``max_strings`` strings, naming the top-level field
    where the limit is passed; checked on the text, before ``json.loads`` would recurse
    (RecursionError) or allocate for it.

    Escaped backslashes, then escaped quotes, are dropped first (``bytes.replace``, left to right as
    JSON reads them), so every string is one plain ``"..."`` token that the regular expression skips
    in C; the loop visits brackets and strings only and stops at the first limit passed, so its cost
    is bounded whatever the body. Invalid text is left to ``json.loads``.
    """
    depth = containers = strings = 0
    key: str | None = None  # the top-level member being read
    for m in _JSON_TOKEN.finditer(raw.replace(b"\\\\", b"").replace(b'\\"', b"")):
        token = m.group(0)[:1]
        if token == b'"':
            if m.group(1) is None:  # an unterminated string
                return
            strings += 1
            if depth == 1 and m.group(2):
                key = m.group(1)[:64].decode("utf-8", "replace")
            if strings > max_strings:
                raise ApiError(status, code, f"{what} holds more than {max_strings:,} strings")
        elif token in b"[{":
            depth += 1
            containers += 1
            where = f"{key} (in {what})" if key is not None and depth > 1 else what
            if depth > _JSON_MAX_DEPTH:
                raise ApiError(status, code, f"{where} nests deeper than {_JSON_MAX_DEPTH} levels of arrays/objects")
            if containers > _JSON_MAX_CONTAINERS:
                raise ApiError(status, code, f"{where} holds more than {_JSON_MAX_CONTAINERS:,} arrays/objects")
        else:
            depth -= 1


def _load_json(raw: bytes, what: str, cfg: ServeConfig, status: int, code: str) -> Any:
    """``json.loads(raw)`` within bounds: nesting, arrays/objects and strings checked on the text
    first (:func:`_check_json_shape`), integers over ``_JSON_MAX_DIGITS`` digits kept as
    :class:`_LongNumber`; an answer ``status`` / ``code`` naming ``what`` for text that is not JSON."""
    _check_json_shape(raw, what, 2 * (cfg.max_classes + cfg.max_images) + 256, status, code)
    try:
        return json.loads(raw, parse_int=_json_int)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ApiError(status, code, f"{what} is not valid JSON ({_shown(str(e), 200)})") from None


def _number(value: Any, name: str, kind: type, default: Any) -> Any:
    if value is None or value == "":
        return default
    if isinstance(value, _LongNumber):
        raise ApiError(422, "invalid_field", f"{name} has {value.digits:,} digits; at most {_JSON_MAX_DIGITS} are read")
    if isinstance(value, bool) and kind is not bool:
        raise ApiError(422, "invalid_field", f"{name} must be a number, got {_shown(value)}")
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        out = float(value) if kind is float else int(str(value).strip()) if isinstance(value, str) else value
        if kind is int and (not isinstance(out, int) or isinstance(out, bool)):
            raise ValueError
        if kind is float and not math.isfinite(out):
            raise ValueError
        return out
    except (TypeError, ValueError, OverflowError):
        raise ApiError(
            422,
            "invalid_field",
            f"{name} must be {'true/false' if kind is bool else f'an {kind.__name__}' if kind is int else 'a number'}, got {_shown(value)}",
        ) from None


def _classes(value: Any, default: list[str], cfg: ServeConfig) -> tuple[str, ...]:
    """The request's vocabulary: a list, a built-in name, comma-separated names or a JSON list in a
    string; the server's default when absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if not default:
            raise ApiError(422, "no_classes", "no classes given and the server has no default vocabulary: send classes")
        return tuple(default)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = _load_json(text.encode(), "classes (a JSON list in a string)", cfg, 422, "invalid_classes")
        else:
            value = parse_class_spec(text, files=False)  # a client never names the server's files
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise ApiError(422, "invalid_classes", "classes must be a list of strings or a comma-separated string")
    if len(value) == 1 and is_builtin_vocabulary(value[0]):
        value = parse_class_spec(value[0], files=False)
    names = [n.strip() for n in value]
    if len(names) > cfg.max_classes:
        raise ApiError(
            422, "too_many_classes", f"{len(names)} classes; at most {cfg.max_classes} per request (max_classes)"
        )
    for i, n in enumerate(names):
        if len(n) > cfg.max_name_length:
            raise ApiError(
                422,
                "class_name_too_long",
                f"class name {i} is {len(n)} characters; at most {cfg.max_name_length} (max_name_length)",
            )
    try:
        return tuple(validate_class_names(names))
    except (TypeError, ValueError) as e:
        raise ApiError(422, "invalid_classes", str(e)) from None


def _options(fields: dict[str, Any], cfg: ServeConfig) -> PredictConfig:
    """The request's :class:`PredictConfig`, built once here and passed to the engine.

    Raises:
        ApiError: 422 naming the field (a value of the wrong kind, out of range, an ``imgsz``
            above ``max_imgsz`` or no multiple of the stride, ``max_det`` above 1000).
    """
    defaults = PredictConfig()
    imgsz = _number(fields.get("imgsz"), "imgsz", int, defaults.imgsz)
    max_det = _number(fields.get("max_det"), "max_det", int, defaults.max_det)
    if imgsz > cfg.max_imgsz:
        raise ApiError(422, "invalid_field", f"imgsz must be at most {cfg.max_imgsz} (max_imgsz), got {imgsz}")
    if max_det > 1000:
        raise ApiError(422, "invalid_field", f"max_det must be in [1, 1000], got {max_det}")
    try:
        return PredictConfig(
            conf=_number(fields.get("conf"), "conf", float, defaults.conf),
            iou=_number(fields.get("iou"), "iou", float, defaults.iou),
            imgsz=imgsz,
            max_det=max_det,
            agnostic_nms=_number(fields.get("agnostic_nms"), "agnostic_nms", bool, defaults.agnostic_nms),
        )
    except ConfigError as e:
        raise ApiError(422, "invalid_field", str(e)) from None


def _safe_name(name: str | None, index: int) -> str:
    """A client's file name as a label only: its last path part, printable, at most 128 characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:128].strip()
    return base or f"image{index}"


async def _parse_multipart(request: Request, body: bytes, cfg: ServeConfig) -> tuple[list[tuple[str, bytes]], dict]:
    async def once() -> AsyncIterator[bytes]:
        yield body

    parser = MultiPartParser(request.headers, once(), max_files=cfg.max_images, max_fields=32, max_part_size=1 << 20)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if "files" in str(e).lower():
            raise ApiError(
                422, "too_many_images", f"at most {cfg.max_images} images per request (max_images)"
            ) from None
        raise ApiError(400, "bad_request", f"malformed multipart body: {e}") from None
    images = []
    for key in ("images", "image"):
        for item in form.getlist(key):
            if not isinstance(item, UploadFile):
                raise ApiError(400, "bad_request", f"form field {key!r} must be a file upload, not text")
            images.append((_safe_name(item.filename, len(images)), await item.read()))
            await item.close()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return images, fields


def _parse_json(body: bytes, cfg: ServeConfig) -> tuple[list[tuple[str, bytes]], dict]:
    """The images (name, bytes) and the other fields of a JSON body (without the base64 text)."""
    data = _load_json(body, "the JSON body", cfg, 400, "bad_request")
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the JSON body must be an object with an 'images' list")
    items = data.get("images", [data["image"]] if "image" in data else None)
    if not isinstance(items, list):
        raise ApiError(422, "no_images", "'images' must be a list of base64-encoded images")
    if len(items) > cfg.max_images:
        raise ApiError(
            422, "too_many_images", f"{len(items)} images; at most {cfg.max_images} per request (max_images)"
        )
    images = []
    for i, item in enumerate(items):
        name = None
        if isinstance(item, dict):
            name, item = item.get("name"), item.get("data")
        if not isinstance(item, str):
            raise ApiError(
                422, "invalid_image", f"images[{i}] must be a base64 string or {{'data': base64, 'name': ...}}"
            )
        text = item.strip()
        if _URL.match(text):
            raise ApiError(
                422,
                "invalid_image",
                f"images[{i}] is a URL: the server never fetches URLs; send the image bytes as base64",
            )
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(
                422,
                "invalid_image",
                f"images[{i}] is not valid base64 (the server never reads server paths or URLs: send the image bytes)",
            ) from None
        images.append((_safe_name(name if isinstance(name, str) else None, i), raw))
    return images, {k: v for k, v in data.items() if k not in ("images", "image")}


def _label(i: int, name: str) -> str:
    return f"image {i} ({name!r})"


def _pixels(images: list[tuple[str, bytes]], max_pixels: int) -> list[int]:
    """Width × height of each image as its header declares it, before decoding (``max_pixels``
    for a header that says nothing readable: decoding then decides, within that limit; 0 for an
    empty file).

    Raises:
        ApiError: 413 for an image over ``max_pixels``.
    """
    out = []
    for i, (name, raw) in enumerate(images):
        size = declared_size(raw) if raw else None
        if size is not None and size[0] * size[1] > max_pixels:
            raise ApiError(
                413,
                "too_many_pixels",
                f"{_label(i, name)} declares {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels; the limit is "
                f"{max_pixels:,} (max_pixels); not decoded",
            )
        out.append(size[0] * size[1] if size is not None else max_pixels if raw else 0)
    return out


def _check_request_memory(pixels: list[int], cfg: ServeConfig) -> int:
    """The bytes decoding a request's images takes (:func:`~ovdet.serve.budget.decoded_bytes`).

    Raises:
        ApiError: 413 above ``max_request_decoded_bytes``.
    """
    need = decoded_bytes(pixels)
    if need > cfg.max_request_decoded_bytes:
        raise ApiError(
            413,
            "too_much_memory",
            f"the {len(pixels)} images decode to {need:,} bytes ({BYTES_PER_PIXEL} per pixel, plus the decoder's "
            f"copy of the largest); the limit is {cfg.max_request_decoded_bytes:,} (max_request_decoded_bytes): "
            "send fewer or smaller images per request; not decoded",
        )
    return need


def _decode(images: list[tuple[str, bytes]], pixels: list[int], max_pixels: int) -> list[np.ndarray]:
    """Decoded BGR arrays of at most ``pixels[i]`` pixels each (what the memory budget holds for
    them); 413 for an image over ``max_pixels``, 422 for one that is not an image or decodes to
    more pixels than its header declares."""
    out = []
    for i, (name, raw) in enumerate(images):
        label = _label(i, name)
        try:
            image = decode_image_bytes(raw, label, max_pixels=max_pixels, capture=False)
        except ImageReadError as e:
            raise ApiError(422, "invalid_image", str(e)) from None
        if image.shape[0] * image.shape[1] > max_pixels:
            raise ApiError(
                413,
                "too_many_pixels",
                f"{label} has {image.shape[1]}x{image.shape[0]} pixels; the limit is {max_pixels:,} (max_pixels)",
            )
        if image.shape[0] * image.shape[1] > pixels[i]:
            raise ApiError(
                422,
                "invalid_image",
                f"{label} decodes to {image.shape[1]}x{image.shape[0]} pixels, more than its header declares",
            )
        out.append(image)
    return out


# ------------------------------------------------------------------------------------------ the app
_DETECT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "classes": {
                            "type": "string",
                            "description": "comma-separated names, a JSON list, or coco / lvis / objects365; "
                            "default: the server's vocabulary",
                        },
                        "conf": {"type": "number", "default": 0.25},
                        "iou": {"type": "number", "default": 0.7},
                        "imgsz": {"type": "integer", "default": 640},
                        "max_det": {"type": "integer", "default": 300},
                        "agnostic_nms": {"type": "boolean", "default": False},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {
                            "type": "array",
                            "items": {
                                "type": "string",
                                "description": "base64 bytes (or a data: URL) of an image file",
                            },
                        },
                        "classes": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]},
                        "conf": {"type": "number"},
                        "iou": {"type": "number"},
                        "imgsz": {"type": "integer"},
                        "max_det": {"type": "integer"},
                        "agnostic_nms": {"type": "boolean"},
                    },
                }
            },
        },
    },
    "responses": {
        "200": {
            "description": "one result per image: path, image_size [h, w], names, detections [{box xyxy, score, label, name}]"
        },
        "401": {"description": "missing or wrong API key"},
        "408": {"description": "the body did not arrive within timeout_s"},
        "413": {
            "description": "body over max_upload_bytes, an image over max_pixels, or images that decode to more "
            "than max_request_decoded_bytes"
        },
        "422": {"description": "a field, class list or image that cannot be used (the detail says which)"},
        "503": {
            "description": "the queue is full, or the memory budget (memory_budget_bytes) is in use "
            "(Retry-After says when to retry)"
        },
        "504": {"description": "no result within timeout_s"},
    },
}


def create_app(
    detector: ServableDetector, cfg: ServeConfig | None = None, model_name: str | None = None, precision: str = "fp32"
) -> FastAPI:
    """The server for ``detector``: API, page, micro-batching worker (started with the app).

    Args:
        detector: the model; its vocabulary (if any) is the default for requests without classes.
        cfg: limits, batching, security (:class:`~ovdet.config.ServeConfig`).
        model_name: what ``/v1/model`` calls the model (e.g. the ``--model`` value).
        precision: ``"fp32"``, ``"fp16"`` (CUDA) or ``"bf16"``.
    """
    from ovdet.device import resolve_precision

    cfg = cfg or ServeConfig()
    engine = BatchEngine(detector, cfg, resolve_precision(precision, detector.device))
    budget = MemoryBudget(cfg.memory_budget_bytes)
    default = engine.vocab.default_names
    page = resources.files("ovdet.serve").joinpath("static")
    static = {name: page.joinpath(name).read_bytes() for name in ("index.html", *_STATIC)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            await run_in_threadpool(engine.stop)

    app = FastAPI(
        title="ovdet",
        version=__version__,
        description="Open-vocabulary object detection: boxes for any class names given at request time.",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.budget = budget
    app.state.config = cfg
    if cfg.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cfg.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.code, e.detail, e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, "http_error", str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s %s", ref, request.method, request.url.path, exc_info=e)
        return _error(500, "internal", f"internal server error (reference {ref}; details are in the server log)")

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    def authorize(request: Request) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), cfg.api_key.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong API key: send it in the X-API-Key header",
                {"WWW-Authenticate": "Bearer"},
            )

    # -------------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(
            static["index.html"], headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"}
        )

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in _STATIC:
            raise ApiError(404, "not_found", f"no static file {name!r}")
        return Response(static[name], media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    # -------------------------------------------------------------------- API
    @app.get("/v1/health", summary="Liveness and queue depth (no API key needed)")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "inflight": engine.inflight,
            "queue_size": cfg.queue_size,
            "auth_required": cfg.api_key is not None,
        }

    @app.get("/v1/model", summary="The model, text encoder, default classes, device and limits")
    async def model_info(request: Request) -> dict[str, Any]:
        authorize(request)
        mcfg = detector.model.cfg
        return {
            "model": model_name,
            "ovdet": __version__,
            "architecture": {
                "version": mcfg.version,
                "channels": list(mcfg.channels),
                "embed_dim": mcfg.embed_dim,
                "strides": list(mcfg.strides),
                "parameters": sum(p.numel() for p in detector.model.parameters()),
            },
            "text_encoder": text_encoder_id(mcfg.text),
            "default_classes": default,
            "builtin_vocabularies": list(BUILTIN_VOCABULARIES),
            "device": str(detector.device),
            "precision": precision,
            "batching": {"window_ms": cfg.batch_window_ms, "max_batch": cfg.max_batch, "queue_size": cfg.queue_size},
            "limits": {
                "max_upload_bytes": cfg.max_upload_bytes,
                "max_pixels": cfg.max_pixels,
                "max_images": cfg.max_images,
                "max_classes": cfg.max_classes,
                "max_name_length": cfg.max_name_length,
                "max_imgsz": cfg.max_imgsz,
                "timeout_s": cfg.timeout_s,
                "max_request_decoded_bytes": cfg.max_request_decoded_bytes,
                "memory_budget_bytes": cfg.memory_budget_bytes,
                "max_connections": cfg.max_connections,
                "header_timeout_s": cfg.header_timeout_s,
                "keep_alive_s": cfg.keep_alive_s,
            },
        }

    @app.get("/v1/stats", summary="Counters: requests, batches, mean batch size, rejections, caches")
    async def stats(request: Request) -> dict[str, Any]:
        authorize(request)
        return {
            **engine.stats(),
            "memory_in_flight_bytes": budget.used,
            "memory_budget_bytes": budget.capacity,
            "memory_refused": budget.refused,
        }

    def left(t0: float) -> float:
        """Seconds of the request's ``timeout_s`` left."""
        return cfg.timeout_s - (time.perf_counter() - t0)

    async def reserve(held: Reservation, n: int, t0: float) -> None:
        """Hold ``n`` bytes of the memory budget for this request; 503 when they are not free
        within ``_BUDGET_WAIT_S`` seconds."""
        if not await held.resize(n, min(_BUDGET_WAIT_S, max(0.0, left(t0)))):
            raise ApiError(
                503,
                "busy",
                f"the server's memory budget is in use: {budget.used:,} of {budget.capacity:,} bytes of request "
                f"bodies and decoded images are in flight (memory_budget_bytes) and this request needs {n:,}; "
                "retry later",
                {"Retry-After": str(engine.retry_after())},
            )

    async def read_images(request: Request, held: Reservation, t0: float) -> tuple[list[tuple[str, bytes]], dict]:
        """The request's images (name, encoded bytes) and fields; ``held`` then covers the image bytes."""
        declared = _declared_length(request, cfg.max_upload_bytes)
        await reserve(held, SERVE_BODY_COPIES * (cfg.max_upload_bytes if declared is None else declared), t0)
        try:
            body = await asyncio.wait_for(_read_body(request, cfg.max_upload_bytes), max(0.001, left(t0)))
        except TimeoutError:
            raise ApiError(
                408, "body_timeout", f"the request body did not arrive within {cfg.timeout_s:g} s (timeout_s)"
            ) from None
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            images, fields = await _parse_multipart(request, body, cfg)
        elif kind == "application/x-www-form-urlencoded":  # a form with no file field
            raise ApiError(422, "no_images", "no image in the request: send image files as multipart/form-data")
        elif kind == "application/json":
            images, fields = _parse_json(body, cfg)
        else:
            raise ApiError(
                415, "unsupported_media_type", "send multipart/form-data (image files) or application/json (base64)"
            )
        del body  # the body and its parsed form are gone: only the image bytes remain
        await held.resize(sum(len(raw) for _, raw in images), 0.0)
        return images, fields

    @app.post("/v1/detect", summary="Detect the given classes in one or more images", openapi_extra=_DETECT_DOC)
    async def detect(request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        authorize(request)
        try:
            engine.check_capacity()
        except QueueFull as e:
            raise ApiError(503, "busy", str(e), {"Retry-After": str(e.retry_after)}) from None
        held = budget.reservation()
        job: Job | None = None
        try:
            images, fields = await read_images(request, held, t0)
            if not images:
                raise ApiError(
                    422, "no_images", "no image in the request: send one or more files in the 'images' field"
                )
            if len(images) > cfg.max_images:
                raise ApiError(
                    422, "too_many_images", f"{len(images)} images; at most {cfg.max_images} per request (max_images)"
                )
            names = _classes(fields.get("classes"), default, cfg)
            options = _options(fields, cfg)
            pixels = _pixels(images, cfg.max_pixels)
            need = _check_request_memory(pixels, cfg)
            await reserve(held, held.held + need, t0)
            arrays = await run_in_threadpool(_decode, images, pixels, cfg.max_pixels)
            sources = [n for n, _ in images]
            del images  # the encoded bytes and the decoder's copies are gone: the arrays remain
            await held.resize(BYTES_PER_PIXEL * sum(pixels), 0.0)
            t1 = time.perf_counter()
            job = Job(arrays, sources, names, options)
            del arrays
            try:
                future = engine.submit(job)
            except QueueFull as e:
                raise ApiError(503, "busy", str(e), {"Retry-After": str(e.retry_after)}) from None
            try:
                result: JobResult = await asyncio.wait_for(asyncio.wrap_future(future), max(0.001, left(t0)))
            except TimeoutError:
                engine.cancel(job)
                raise ApiError(
                    504, "timeout", f"no result within {cfg.timeout_s:g} s (timeout_s); the server is overloaded"
                ) from None
            except TextEncoderUnavailable as e:
                raise ApiError(503, "text_encoder_unavailable", str(e)) from None
            except VocabularyError as e:
                raise ApiError(422, "invalid_classes", str(e)) from None
        finally:
            if job is None or job.future.done():
                held.release()
            else:  # still running in the worker (it timed out): release once the worker lets go of the arrays
                loop = asyncio.get_running_loop()
                job.future.add_done_callback(lambda _: loop.call_soon_threadsafe(held.release))
        total = (time.perf_counter() - t0) * 1e3
        return JSONResponse(
            {
                "results": [d.to_dict() for d in result.detections],
                "timing": {
                    "decode_ms": round((t1 - t0) * 1e3, 2),
                    "queue_ms": round(result.queue_ms, 2),
                    "inference_ms": round(result.inference_ms, 2),
                    "total_ms": round(total, 2),
                },
                "batch": {"requests": result.batch_requests, "images": result.batch_images},
            }
        )

    return app
