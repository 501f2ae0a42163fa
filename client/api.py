"""`ImageClassifierClient` and its async twin: images in, typed top-k predictions out, over gRPC or HTTP.

The client sends encoded bytes as they are (decoding happens on the server), asks for labels through
Triton's classification extension (`class_count`), and reads tensor names from the server's model
metadata, so it follows the deployed configs. Both clients share everything but the I/O: request
building, response parsing, the mapping of failures to the exceptions in `client.errors`, and the
retry policy (exponential backoff with jitter, for transient failures only, within the timeout).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from client import defaults
from client.defaults import DEFAULT_MODEL, PROTOCOLS
from client.endpoints import DNS_SCHEME, EndpointPool, parse_urls
from client.errors import ClientError, InferenceError, InvalidImage, ModelNotReady, ServerUnavailable
from client.image_formats import UNDECODABLE
from client.images import ImageInput, Limits, PreparedImage, prepare

TRANSIENT_STATUSES = {"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED", "503", "429"}
NOT_READY_STATUSES = {"StatusCode.NOT_FOUND", "404"}
INVALID_STATUSES = {"StatusCode.INVALID_ARGUMENT", "400"}


# -- typed results ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


@dataclasses.dataclass(frozen=True)
class ImageResult:
    """The outcome for one image: predictions (best first), or the error that stopped it."""

    source: str
    predictions: tuple[Prediction, ...] = ()
    error: ClientError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def top(self) -> Prediction:
        self.raise_for_error()
        return self.predictions[0]

    def raise_for_error(self) -> ImageResult:
        if self.error is not None:
            raise self.error
        return self


@dataclasses.dataclass(frozen=True)
class Health:
    live: bool
    ready: bool
    model_ready: bool


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    name: str
    platform: str
    versions: tuple[str, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits up to min(max_backoff, backoff * 2**n)."""

    retries: int = 3
    backoff: float = 0.25
    max_backoff: float = 8.0

    def delay(self, error: ClientError, attempt: int, deadline: float) -> float | None:
        """Seconds to wait before retrying after `error`, or None to give up."""
        if not error.transient or attempt >= self.retries:
            return None
        wait = min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
        return wait if time.monotonic() + wait < deadline else None


# -- shared, I/O-free pieces -----------------------------------------------------------------------
def triton_module(protocol: str, aio: bool):
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    if protocol == "grpc":
        import tritonclient.grpc as sync_module
        import tritonclient.grpc.aio as aio_module
    else:
        import tritonclient.http as sync_module
        import tritonclient.http.aio as aio_module
    return aio_module if aio else sync_module


@dataclasses.dataclass(frozen=True)
class Tls:
    """TLS to the server: `ca_certs` to trust, a client certificate for mutual TLS, or `insecure`."""

    ca_certs: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    insecure: bool = False

    def grpc_kwargs(self) -> dict:
        # tritonclient.grpc opens these files itself (it takes paths, not their contents).
        return {"ssl": True, "root_certificates": self.ca_certs, "private_key": self.client_key,
                "certificate_chain": self.client_cert}

    def ssl_context(self):
        import ssl

        context = ssl.create_default_context(cafile=self.ca_certs)
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def client_kwargs(protocol: str, aio: bool, timeout: float, tls: Tls | None, url: str = "") -> dict:
    kwargs: dict = {}
    if protocol == "grpc" and url.startswith(DNS_SCHEME):
        # Every address behind the name, each request to the next (gRPC's default would pin one).
        kwargs["channel_args"] = [("grpc.lb_policy_name", "round_robin")]
    if protocol == "http":
        kwargs.update({"conn_timeout": timeout} if aio else {"connection_timeout": timeout, "network_timeout": timeout})
    if tls is not None:
        if protocol == "grpc":
            kwargs.update(tls.grpc_kwargs())
        elif aio:
            kwargs.update(ssl=True, ssl_context=tls.ssl_context())
        else:
            kwargs.update(ssl=True, ssl_context_factory=tls.ssl_context, insecure=tls.insecure)
    return kwargs


def parse_prediction(entry: bytes | str) -> Prediction:
    """Triton's classification string "score:index:label" (the label may itself contain ':')."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    score, index, label = text.split(":", 2)
    return Prediction(label=label, index=int(index), score=float(score))


def build_request(module, names: tuple[str, str], images: Sequence[PreparedImage], top_k: int):
    """One request for `images`: rows of encoded bytes, zero-padded to the longest (top_k 0: raw output)."""
    input_name, output_name = names
    batch = np.zeros((len(images), max(len(i.data) for i in images)), dtype=np.uint8)
    for row, image in zip(batch, images, strict=True):
        row[: len(image.data)] = np.frombuffer(image.data, dtype=np.uint8)
    tensor = module.InferInput(input_name, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    return [tensor], [module.InferRequestedOutput(output_name, class_count=top_k)]


def parse_response(result, output_name: str, images: Sequence[PreparedImage]) -> list[ImageResult]:
    rows = result.as_numpy(output_name).reshape(len(images), -1)
    return [ImageResult(image.source, tuple(parse_prediction(e) for e in row)) for image, row in zip(images, rows, strict=True)]


def connection_dropped(exc: BaseException) -> bool:
    """The HTTP client's connection closed under a request: the server died or restarted (a retry is safe:
    classifying is idempotent)."""
    try:
        from geventhttpclient.response import HTTPConnectionClosed
    except ImportError:  # installed without tritonclient's HTTP extra
        return False
    return isinstance(exc, HTTPConnectionClosed)


def to_client_error(exc: BaseException, url: str, timeout: float, source: str | None = None) -> ClientError:
    """Map what tritonclient, gRPC, aiohttp and sockets raise to this client's exceptions."""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, ClientError):
        return exc
    if isinstance(exc, InferenceServerException):
        status, message = str(exc.status() or ""), exc.message() or str(exc)
        # Triton answers a restricted gRPC call with UNAVAILABLE: it is not a transient failure.
        if "is restricted" in message or status in ("403", "StatusCode.PERMISSION_DENIED", "StatusCode.UNAUTHENTICATED"):
            return InferenceError(f"{message}; this API needs the admin key (admin_key=..., or --admin-key)", source)
        if status in TRANSIENT_STATUSES:
            return ServerUnavailable(f"server at {url} unavailable ({message}); check that it is running and reachable", source)
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return InferenceError(f"no answer within {timeout:g}s; raise the timeout or lower the load", source)
        if status in NOT_READY_STATUSES or "unknown model" in message or "is not ready" in message:
            return ModelNotReady(f"{message}; list the served models with `python -m client models`", source)
        if status in INVALID_STATUSES and UNDECODABLE in message:
            return InvalidImage(message, source)
        return InferenceError(message, source)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return InferenceError(f"no answer within {timeout:g}s; raise the timeout or lower the load", source)
    if isinstance(exc, OSError) or connection_dropped(exc) or type(exc).__module__.startswith("aiohttp"):
        return ServerUnavailable(f"cannot connect to {url} ({exc}); check that the server is running", source)
    return InferenceError(f"{type(exc).__name__}: {exc}", source)


def prepare_all(images: Iterable[ImageInput], limits: Limits) -> list[PreparedImage | ImageResult]:
    """Check every image; the refused ones become failed results at once."""
    prepared: list[PreparedImage | ImageResult] = []
    for index, image in enumerate(images):
        try:
            prepared.append(prepare(image, index, limits))
        except InvalidImage as exc:
            prepared.append(ImageResult(exc.source or f"<image #{index}>", error=exc))
    return prepared


def groups_of(items: list[PreparedImage], size: int) -> list[list[PreparedImage]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


def merge(prepared: list[PreparedImage | ImageResult], done: list[ImageResult]) -> list[ImageResult]:
    """Results in input order: refused images keep their result, the others take the next of `done`."""
    answers = iter(done)
    return [item if isinstance(item, ImageResult) else next(answers) for item in prepared]


def tensor_infos(items) -> tuple[TensorInfo, ...]:
    """From HTTP's JSON dicts or gRPC's protobuf messages."""
    def get(tensor, key):
        return tensor[key] if isinstance(tensor, dict) else getattr(tensor, key)

    return tuple(TensorInfo(get(t, "name"), get(t, "datatype"), tuple(int(d) for d in get(t, "shape"))) for t in items)


def model_info(metadata) -> ModelInfo:
    if isinstance(metadata, dict):  # HTTP
        return ModelInfo(metadata["name"], metadata.get("platform", ""), tuple(metadata.get("versions", ())),
                         tensor_infos(metadata["inputs"]), tensor_infos(metadata["outputs"]))
    return ModelInfo(metadata.name, metadata.platform, tuple(metadata.versions),
                     tensor_infos(metadata.inputs), tensor_infos(metadata.outputs))


def tensor_names(metadata) -> tuple[str, str]:
    """(input, output) names of a single-input, single-output model, from its metadata."""
    info = model_info(metadata)
    return info.inputs[0].name, info.outputs[0].name


def report(on_result: Callable[[ImageResult], None] | None, results: list[ImageResult]) -> list[ImageResult]:
    """Hand each result to `on_result` (progress bars) as it is known; returns them."""
    if on_result:
        for result in results:
            on_result(result)
    return results


def index_entries(index) -> list[dict]:
    """The repository index as dicts (name, version, state, reason), from HTTP or gRPC."""
    entries = index if isinstance(index, list) else [
        {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in index.models]
    return [{key: entry.get(key, "") for key in ("name", "version", "state", "reason")} for entry in entries]


class _Base:
    """Settings shared by both clients."""

    def __init__(self, url: str | Sequence[str] | None, protocol: str, model: str, timeout: float, retries: int,
                 headers: dict | None, tls: Tls | None, limits: Limits, images_per_request: int, concurrency: int,
                 admin_key: str | None, aio: bool):
        if images_per_request < 1 or concurrency < 1 or timeout <= 0:
            raise ValueError("images_per_request and concurrency must be >= 1, timeout > 0")
        self.protocol = protocol
        self._triton = triton_module(protocol, aio)
        self.urls = parse_urls(url or defaults.url(protocol))
        self.url = ",".join(self.urls)
        self.endpoints = EndpointPool(self.urls)
        self.model = model
        self.timeout = timeout
        self.retry = RetryPolicy(retries=retries)
        self.headers = dict(headers or {})
        if admin_key:
            self.headers[defaults.admin_header(protocol)] = admin_key
        self.tls = tls
        self.limits = limits
        self.images_per_request = images_per_request
        self.concurrency = concurrency
        self._names: tuple[str, str] | None = None
        self._max_batch: list[int | None] = []  # filled once: [max_batch_size or None]

    def _new_triton_client(self, url: str):
        aio = self._triton.__name__.endswith(".aio")
        return self._triton.InferenceServerClient(url, **client_kwargs(self.protocol, aio, self.timeout, self.tls, url))

    def _failover(self, error: ClientError, url: str, failed_on: list[str], deadline: float) -> bool:
        """After `error` on `url`: set the server aside if it is unreachable; whether another takes the request now."""
        if not isinstance(error, ServerUnavailable):
            return False
        self.endpoints.failed(url)
        failed_on.append(url)
        return self.endpoints.others_ready(url, failed_on) and time.monotonic() < deadline

    def _timeout_kwargs(self) -> dict:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}

    @staticmethod
    def _max_batch_from(config) -> int:
        if isinstance(config, dict):  # HTTP
            return int(config.get("max_batch_size", 0))
        return int(config.config.max_batch_size)

    def _per_request(self, max_batch_size: int | None) -> int:
        """images_per_request, capped by the model's max_batch_size when the server tells it."""
        return min(self.images_per_request, max_batch_size) if max_batch_size else self.images_per_request

    def _prepare(self, images: Iterable[ImageInput], top_k: int, on_result) -> list[PreparedImage | ImageResult]:
        """Check the images; the refused ones are reported at once."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, not {top_k}")
        prepared = prepare_all(images, self.limits)
        report(on_result, [item for item in prepared if isinstance(item, ImageResult)])
        return prepared

    def _groups(self, prepared: list[PreparedImage | ImageResult], max_batch_size: int | None) -> list[list[PreparedImage]]:
        return groups_of([p for p in prepared if isinstance(p, PreparedImage)], self._per_request(max_batch_size))

    def _error(self, exc: BaseException, url: str, source: str | None = None) -> ClientError:
        return to_client_error(exc, url, self.timeout, source)


class ImageClassifierClient(_Base):
    """Classify images with the served ensemble. Thread-safe; use as a context manager.

    images_per_request > 1 packs several images into one request (zero-padded), at most the model's
    max_batch_size when the server reveals it (its config API needs `admin_key`); 1 (the default)
    lets the server batch requests itself and keeps every image's errors its own.
    """

    def __init__(self, url: str | Sequence[str] | None = None, protocol: str = "grpc", model: str = DEFAULT_MODEL,
                 timeout: float = 30.0, retries: int = 3, headers: dict | None = None, tls: Tls | None = None,
                 limits: Limits = Limits(), images_per_request: int = 1, concurrency: int = 4, admin_key: str | None = None):
        super().__init__(url, protocol, model, timeout, retries, headers, tls, limits, images_per_request, concurrency,
                         admin_key, aio=False)
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="image-classifier",
                                        initializer=self._adopt_thread)

    # Every call runs on the client's own threads, each with its tritonclient client for the client's life:
    # the HTTP one is not thread-safe and stays bound to the thread that made it (gevent), and a client per
    # call or per caller thread would leave a connection open on the server for each.
    def _adopt_thread(self) -> None:
        self._local.owned = True

    def _client(self, url: str):
        """This thread's client for `url`; a new one after the server failed (its old connection is dead)."""
        clients = self._local.__dict__.setdefault("clients", {})
        generation = self.endpoints.generation(url)
        known = clients.get(url)
        if known is not None and known[0] == generation:
            return known[1]
        client = self._new_triton_client(url)
        clients[url] = (generation, client)
        with self._lock:
            if known is not None:
                self._clients.remove(known[1])
                known[1].close()
            self._clients.append(client)
        return client

    def _call(self, function: Callable, source: str | None = None):
        """`function(client)` on the next server, on another at once if it is unreachable, with retries for
        transient failures within the timeout."""
        if not getattr(self._local, "owned", False):
            return self._pool.submit(self._call, function, source).result()
        deadline, attempt, failed_on = time.monotonic() + self.timeout, 0, []
        while True:
            url = self.endpoints.pick(avoid=failed_on)
            try:
                result = function(self._client(url))
            except Exception as exc:
                error = self._error(exc, url, source)
                if self._failover(error, url, failed_on, deadline):
                    continue
                delay = self.retry.delay(error, attempt, deadline)
                if delay is None:
                    raise error from exc
                time.sleep(delay)
                attempt += 1
                failed_on.clear()
            else:
                self.endpoints.succeeded(url)
                return result

    def health(self) -> Health:
        live = self._call(lambda c: c.is_server_live(headers=self.headers))
        ready = self._call(lambda c: c.is_server_ready(headers=self.headers))
        return Health(live, ready, self._call(lambda c: c.is_model_ready(self.model, headers=self.headers)))

    def metadata(self) -> ModelInfo:
        return model_info(self._call(lambda c: c.get_model_metadata(self.model, headers=self.headers)))

    def models(self) -> list[dict]:
        """The repository index (an admin API: needs `admin_key`)."""
        return index_entries(self._call(lambda c: c.get_model_repository_index(headers=self.headers)))

    def tensor_names(self) -> tuple[str, str]:
        if self._names is None:
            self._names = tensor_names(self._call(lambda c: c.get_model_metadata(self.model, headers=self.headers)))
        return self._names

    def max_batch_size(self) -> int | None:
        """The model's max_batch_size, or None when the server does not tell (its config API is an admin API)."""
        if not self._max_batch:
            try:
                config = self._call(lambda c: c.get_model_config(self.model, headers=self.headers))
                self._max_batch.append(self._max_batch_from(config))
            except InferenceError:
                self._max_batch.append(None)
        return self._max_batch[0]

    def _infer(self, images: list[PreparedImage], top_k: int) -> list[ImageResult]:
        names = self.tensor_names()

        def send(client):
            inputs, outputs = build_request(self._triton, names, images, top_k)
            return client.infer(self.model, inputs, outputs=outputs, headers=self.headers, **self._timeout_kwargs())

        return parse_response(self._call(send, images[0].source if len(images) == 1 else None), names[1], images)

    def _classify_group(self, images: list[PreparedImage], top_k: int) -> list[ImageResult]:
        try:
            return self._infer(images, top_k)
        except InvalidImage as exc:
            if len(images) == 1:
                return [ImageResult(images[0].source, error=exc)]
            # One bad image fails its whole request: resend each alone so only the bad one fails.
            return [result for image in images for result in self._classify_group([image], top_k)]
        except ClientError as exc:
            return [ImageResult(image.source, error=exc) for image in images]

    def classify(self, images: Iterable[ImageInput], top_k: int = 5,
                 on_result: Callable[[ImageResult], None] | None = None) -> list[ImageResult]:
        """One result per image, in order; failures are results with `.error` (see `raise_for_error`)."""
        prepared = self._prepare(images, top_k, on_result)
        groups = self._groups(prepared, self.max_batch_size() if self.images_per_request > 1 else None)
        runs = self._pool.map(lambda group: report(on_result, self._classify_group(group, top_k)), groups)
        done = [result for results in runs for result in results]
        return merge(prepared, done)

    def classify_one(self, image: ImageInput, top_k: int = 5) -> ImageResult:
        """Classify one image; raises the ClientError subclass that stopped it."""
        return self.classify([image], top_k)[0].raise_for_error()

    def close(self) -> None:
        self._pool.shutdown()
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()

    def __enter__(self) -> ImageClassifierClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class AsyncImageClassifierClient(_Base):
    """The asyncio twin of ImageClassifierClient (tritonclient's grpc.aio / http.aio); `async with` it."""

    def __init__(self, url: str | Sequence[str] | None = None, protocol: str = "grpc", model: str = DEFAULT_MODEL,
                 timeout: float = 30.0, retries: int = 3, headers: dict | None = None, tls: Tls | None = None,
                 limits: Limits = Limits(), images_per_request: int = 1, concurrency: int = 4, admin_key: str | None = None):
        super().__init__(url, protocol, model, timeout, retries, headers, tls, limits, images_per_request, concurrency,
                         admin_key, aio=True)
        self._clients: dict[str, tuple[int, object]] = {}  # url -> (the server's failure generation, client)
        self._stale: list = []  # clients of servers that failed since: closed at the next await

    def _connection(self, url: str):
        generation = self.endpoints.generation(url)
        known = self._clients.get(url)
        if known is not None and known[0] == generation:
            return known[1]
        if known is not None:
            self._stale.append(known[1])
        client = self._new_triton_client(url)
        self._clients[url] = (generation, client)
        return client

    async def _call(self, function: Callable, source: str | None = None):
        deadline, attempt, failed_on = time.monotonic() + self.timeout, 0, []
        while True:
            url = self.endpoints.pick(avoid=failed_on)
            try:
                result = await asyncio.wait_for(function(self._connection(url)), self.timeout)
            except Exception as exc:
                error = self._error(exc, url, source)
                if self._failover(error, url, failed_on, deadline):
                    continue
                delay = self.retry.delay(error, attempt, deadline)
                if delay is None:
                    raise error from exc
                await asyncio.sleep(delay)
                attempt += 1
                failed_on.clear()
            else:
                self.endpoints.succeeded(url)
                return result
            finally:
                while self._stale:
                    await self._stale.pop().close()

    async def health(self) -> Health:
        live = await self._call(lambda c: c.is_server_live(headers=self.headers))
        ready = await self._call(lambda c: c.is_server_ready(headers=self.headers))
        return Health(live, ready, await self._call(lambda c: c.is_model_ready(self.model, headers=self.headers)))

    async def metadata(self) -> ModelInfo:
        return model_info(await self._call(lambda c: c.get_model_metadata(self.model, headers=self.headers)))

    async def models(self) -> list[dict]:
        """The repository index (an admin API: needs `admin_key`)."""
        return index_entries(await self._call(lambda c: c.get_model_repository_index(headers=self.headers)))

    async def tensor_names(self) -> tuple[str, str]:
        if self._names is None:
            self._names = tensor_names(await self._call(lambda c: c.get_model_metadata(self.model, headers=self.headers)))
        return self._names

    async def max_batch_size(self) -> int | None:
        if not self._max_batch:
            try:
                config = await self._call(lambda c: c.get_model_config(self.model, headers=self.headers))
                self._max_batch.append(self._max_batch_from(config))
            except InferenceError:
                self._max_batch.append(None)
        return self._max_batch[0]

    async def _infer(self, images: list[PreparedImage], top_k: int) -> list[ImageResult]:
        names = await self.tensor_names()

        def send(client):
            inputs, outputs = build_request(self._triton, names, images, top_k)
            return client.infer(self.model, inputs, outputs=outputs, headers=self.headers, **self._timeout_kwargs())

        return parse_response(await self._call(send, images[0].source if len(images) == 1 else None), names[1], images)

    async def _classify_group(self, images: list[PreparedImage], top_k: int) -> list[ImageResult]:
        try:
            return await self._infer(images, top_k)
        except InvalidImage as exc:
            if len(images) == 1:
                return [ImageResult(images[0].source, error=exc)]
            return [result for image in images for result in await self._classify_group([image], top_k)]
        except ClientError as exc:
            return [ImageResult(image.source, error=exc) for image in images]

    async def classify(self, images: Iterable[ImageInput], top_k: int = 5,
                       on_result: Callable[[ImageResult], None] | None = None) -> list[ImageResult]:
        prepared = self._prepare(images, top_k, on_result)
        groups = self._groups(prepared, await self.max_batch_size() if self.images_per_request > 1 else None)
        in_flight = asyncio.Semaphore(self.concurrency)

        async def run(group):
            async with in_flight:
                return report(on_result, await self._classify_group(group, top_k))

        done = [result for results in await asyncio.gather(*(run(g) for g in groups)) for result in results]
        return merge(prepared, done)

    async def classify_one(self, image: ImageInput, top_k: int = 5) -> ImageResult:
        return (await self.classify([image], top_k))[0].raise_for_error()

    async def close(self) -> None:
        for _, client in self._clients.values():
            await client.close()
        while self._stale:
            await self._stale.pop().close()
        self._clients.clear()

    async def __aenter__(self) -> AsyncImageClassifierClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()
