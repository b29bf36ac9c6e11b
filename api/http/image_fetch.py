"""Fetch buyers' photos without blocking the event loop: URLs, S3-compatible storage, a local root.

Every source is bounded (connect/read timeouts, a byte limit) and every remote source sits
behind a circuit breaker (one per host or endpoint), so a dead storage fails fast instead of
holding requests until their deadline. Caller mistakes (a 404, a refused URL) never trip a
breaker; only the storage's own failures (refused connections, timeouts, 5xx) do.

Example:
    >>> fetcher = ImageFetcher(StorageSettings(), ImageLimits(), default_root=Path("images"))  # doctest: +SKIP
    >>> await fetcher.start(); data = await fetcher.fetch_url("https://cdn.example.com/p.jpg")  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
from purgatory import AsyncCircuitBreakerFactory
from purgatory.domain.model import OpenedState

from api.http.errors import (
    ApiError,
    BadRequestError,
    ImageNotFoundError,
    ImageTooLargeApiError,
    ImageUnavailableError,
    PathNotAllowedError,
    StorageError,
    StorageTimeoutError,
    StorageUnavailableError,
    UrlNotAllowedError,
)
from api.http.ssrf import Resolver, UrlPolicy, system_resolver
from api.settings import StorageSettings
from retrieval.images import ImageLimits

__all__ = ["ImageFetcher", "decode_base64_image"]

_S3_NOT_CONFIGURED = (
    "image_path s3://… needs S3 storage, which this service has not configured (TANDEM_STORAGE__S3_ENDPOINT_URL,"
    " TANDEM_STORAGE__S3_ACCESS_KEY_ID, TANDEM_STORAGE__S3_SECRET_ACCESS_KEY); send the photo as image_url or"
    " image_base64, or a path under the storage root"
)


def decode_base64_image(data: str, limits: ImageLimits) -> bytes:
    """Decode an ``image_base64`` field (plain or a ``data:`` URL), refusing oversize input before decoding."""
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    if len(data) * 3 // 4 > limits.max_bytes + 3:
        raise ImageTooLargeApiError(f"image_base64 decodes to more than the limit of {limits.max_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequestError("image_base64 is not valid base64") from exc


def _client_error(exc: BaseException) -> bool:
    """Errors that are the caller's doing: they must not open a breaker."""
    return isinstance(exc, ApiError) and exc.is_client_error


class ImageFetcher:
    """Reads image bytes from an http(s) URL, ``s3://bucket/key`` or a key under the local root."""

    def __init__(
        self,
        settings: StorageSettings,
        limits: ImageLimits,
        *,
        default_root: Path | None = None,
        resolver: Resolver = system_resolver,
        transport: httpx.AsyncBaseTransport | None = None,
        on_breaker_state: Callable[[str, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.limits = limits
        root = settings.local_root or default_root
        self.local_root = Path(os.path.abspath(root)) if root is not None else None
        self.policy = UrlPolicy(settings.url_allow, resolver=resolver)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._s3: Any = None
        self._s3_missing = False
        self._breakers = AsyncCircuitBreakerFactory(
            default_threshold=settings.breaker_threshold,
            default_ttl=settings.breaker_reset_s,
            exclude=[(ApiError, _client_error)],
        )
        self._on_breaker_state = on_breaker_state
        if on_breaker_state is not None:
            self._breakers.add_listener(self._breaker_event)

    def _breaker_event(self, name: str, event_type: str, event: Any) -> None:
        if event_type == "state_changed" and self._on_breaker_state is not None:
            self._on_breaker_state(name, str(event.state))
        elif event_type == "circuit_breaker_created" and self._on_breaker_state is not None:
            self._on_breaker_state(name, "closed")

    async def start(self) -> None:
        s = self.settings
        timeout = httpx.Timeout(s.read_timeout_s, connect=s.connect_timeout_s)
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,  # each hop is re-checked against the SSRF policy
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            transport=self._transport,
            trust_env=False,  # a proxy from the environment would bypass the address checks
            headers={"User-Agent": "tandem-image-fetch/1"},
        )
        await self._breakers.initialize()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    @asynccontextmanager
    async def _breaker(self, name: str) -> AsyncIterator[None]:
        try:
            breaker = await self._breakers.get_breaker(name)
            async with breaker:
                yield
        except OpenedState as exc:
            retry = self.settings.breaker_reset_s - (time.time() - exc.opened_at)
            raise StorageUnavailableError(
                f"image storage {name.split(':', 1)[1]} is failing; not retried for {max(retry, 1):.0f} s",
                retry_after_s=int(retry + 0.999),
            ) from exc

    # -- URLs -------------------------------------------------------------------------------------

    async def fetch_url(self, url: str) -> bytes:
        if self._client is None:
            raise RuntimeError("ImageFetcher.start() was not called")
        current = url
        for _ in range(self.settings.max_redirects + 1):
            try:
                parsed = httpx.URL(current)
            except httpx.InvalidURL as exc:
                raise BadRequestError(f"image_url is not a valid URL: {exc}") from exc
            if parsed.scheme not in ("http", "https"):
                raise UrlNotAllowedError(f"image_url must be http or https, not {parsed.scheme or 'a bare path'!r}")
            if not parsed.host:
                raise UrlNotAllowedError("image_url has no host")
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            address = await self.policy.resolve(parsed.host, port)
            async with self._breaker(f"url:{parsed.host}:{port}"):
                body, location = await self._get_once(parsed, address)
            if body is not None:
                return body
            current = urljoin(str(parsed), location)
        raise ImageUnavailableError(f"image_url redirected more than {self.settings.max_redirects} times")

    async def _get_once(self, url: httpx.URL, address: str) -> tuple[bytes | None, str]:
        """GET ``url`` from the checked ``address``: the body, or (None, a redirect's Location)."""
        assert self._client is not None
        # Connect to the address that passed the policy, keep the name for Host and TLS (SNI, certificate).
        pinned = url.copy_with(host=address)
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        request = self._client.build_request(
            "GET", pinned, headers={"Host": url.netloc.decode()}, extensions=extensions
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise StorageTimeoutError(f"the image host {url.host} did not answer in time") from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"cannot reach the image host {url.host}: {exc.__class__.__name__}") from exc
        try:
            if response.is_redirect:
                location = response.headers.get("location")
                if not location:
                    raise ImageUnavailableError(f"the image host {url.host} redirected without a Location")
                return None, location
            if response.status_code == 404:
                raise ImageNotFoundError(f"the image host {url.host} has no image at that URL (HTTP 404)")
            if 400 <= response.status_code < 500:
                raise ImageUnavailableError(f"the image host {url.host} answered HTTP {response.status_code}")
            if response.status_code != 200:
                raise StorageError(f"the image host {url.host} answered HTTP {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.limits.max_bytes:
                raise ImageTooLargeApiError(f"the image is {declared} bytes, over the limit of {self.limits.max_bytes}")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.limits.max_bytes:
                    raise ImageTooLargeApiError(f"the image is over the limit of {self.limits.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks), ""
        except httpx.TimeoutException as exc:
            raise StorageTimeoutError(f"the image host {url.host} stalled while sending the image") from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"the image host {url.host} broke off: {exc.__class__.__name__}") from exc
        finally:
            await response.aclose()

    # -- shared storage ---------------------------------------------------------------------------

    async def fetch_path(self, image_path: str) -> bytes:
        if image_path.startswith("s3://"):
            return await self._fetch_s3(image_path)
        return await asyncio.to_thread(self._read_local, image_path)

    def _read_local(self, key: str) -> bytes:
        if self.local_root is None:
            raise PathNotAllowedError("image_path needs a storage root: set TANDEM_STORAGE__LOCAL_ROOT")
        if "\x00" in key or "://" in key:
            raise PathNotAllowedError("image_path must be s3://bucket/key or a path under the storage root")
        # Lexical check: ".." may not climb out of the root. Symlinks inside the root are the
        # operator's doing (shared mounts often are links) and are followed.
        path = Path(os.path.normpath(self.local_root / key))
        if not path.is_relative_to(self.local_root):
            raise PathNotAllowedError("image_path points outside the storage root")
        try:
            with path.open("rb") as fh:
                data = fh.read(self.limits.max_bytes + 1)
        except FileNotFoundError as exc:
            raise ImageNotFoundError(f"no image at image_path {key!r}") from exc
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise ImageNotFoundError(f"image_path {key!r} is not a file") from exc
        except OSError as exc:
            raise StorageError(f"cannot read image_path {key!r}: {exc.strerror or exc.__class__.__name__}") from exc
        if len(data) > self.limits.max_bytes:
            raise ImageTooLargeApiError(f"the image is over the limit of {self.limits.max_bytes} bytes")
        return data

    def _s3_client(self) -> Any:
        """The S3 client; refused (400) when the service has no S3 storage: no endpoint, no keys, no AWS credentials."""
        if self._s3_missing:
            raise PathNotAllowedError(_S3_NOT_CONFIGURED)
        if self._s3 is None:
            import boto3  # noqa: PLC0415 - lazy: boto3 only when s3:// images are asked for (about a second to import)
            from botocore.config import Config  # noqa: PLC0415 - lazy: botocore only when s3:// images are asked for

            s = self.settings
            session = boto3.session.Session()
            explicit = s.s3_access_key_id is not None and s.s3_secret_access_key is not None
            # Without keys of its own the client signs with AWS's default chain (environment, files, instance
            # role); with none there either, nothing could be read: the caller asked for storage we do not have.
            if not explicit and session.get_credentials() is None:
                self._s3_missing = True  # the chain is looked up once (an instance-role probe takes a second)
                raise PathNotAllowedError(_S3_NOT_CONFIGURED)
            self._s3 = session.client(
                "s3",
                endpoint_url=s.s3_endpoint_url,
                region_name=s.s3_region,
                aws_access_key_id=s.s3_access_key_id.get_secret_value() if explicit and s.s3_access_key_id else None,
                aws_secret_access_key=(
                    s.s3_secret_access_key.get_secret_value() if explicit and s.s3_secret_access_key else None
                ),
                config=Config(
                    connect_timeout=s.connect_timeout_s,
                    read_timeout=s.read_timeout_s,
                    retries={"max_attempts": 1, "mode": "standard"},  # the breaker, not retries, handles outages
                    s3={"addressing_style": "path"},
                    max_pool_connections=32,
                ),
            )
        return self._s3

    async def _fetch_s3(self, image_path: str) -> bytes:
        bucket, _, key = image_path.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise BadRequestError("image_path must look like s3://bucket/key")
        if self.settings.s3_buckets and bucket not in self.settings.s3_buckets:
            raise PathNotAllowedError(f"bucket {bucket!r} is not one of the readable buckets")
        endpoint = self.settings.s3_endpoint_url or "aws"
        async with self._breaker(f"s3:{endpoint}"):
            return await asyncio.to_thread(self._s3_get, bucket, key)

    def _s3_get(self, bucket: str, key: str) -> bytes:
        from botocore.exceptions import (  # noqa: PLC0415 - lazy: botocore only when s3:// images are asked for
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        try:
            obj = self._s3_client().get_object(Bucket=bucket, Key=key)
            if int(obj.get("ContentLength", 0)) > self.limits.max_bytes:
                obj["Body"].close()
                raise ImageTooLargeApiError(f"the image is over the limit of {self.limits.max_bytes} bytes")
            data: bytes = obj["Body"].read(self.limits.max_bytes + 1)
            obj["Body"].close()
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise ImageNotFoundError(f"no image at s3://{bucket}/{key}") from exc
            if 400 <= status < 500:
                raise ImageUnavailableError(f"the storage refused s3://{bucket}/{key} ({code or status})") from exc
            raise StorageError(f"the storage failed on s3://{bucket}/{key} ({code or status})") from exc
        except NoCredentialsError as exc:  # the default chain's credentials went away since the client was made
            raise PathNotAllowedError(_S3_NOT_CONFIGURED) from exc
        except (ConnectTimeoutError, ReadTimeoutError) as exc:
            raise StorageTimeoutError("the S3 storage did not answer in time") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot reach the S3 storage: {exc.__class__.__name__}") from exc
        if len(data) > self.limits.max_bytes:
            raise ImageTooLargeApiError(f"the image is over the limit of {self.limits.max_bytes} bytes")
        return data
