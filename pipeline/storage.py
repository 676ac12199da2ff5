"""Where scenes are read from and mosaics written to: a local path or a URL, resolved in one place.

**Reads** go through GDAL: rasterio maps ``s3://``, ``gs://``, ``az://`` and ``https://`` to
``/vsis3/``, ``/vsigs/``, ``/vsiaz/`` and ``/vsicurl/``, which fetch only the byte ranges a window
needs, so a COG in a bucket is never downloaded whole. **Writes and listings** go through obstore,
whose stores zarr v3 wraps as ``zarr.storage.ObjectStore``. Why obstore rather than fsspec + s3fs:
one compiled wheel with no Python dependencies serves S3, GCS and Azure (s3fs brings aiobotocore,
which pins botocore to a narrow range, and GCS and Azure need two more packages); it reads the same
``AWS_*`` variables as the AWS SDKs, ``AWS_ENDPOINT_URL`` included; and zarr's ObjectStore is
natively async, with no event-loop thread of fsspec's in every worker.

**Configuration** comes from the environment of the process that does the I/O, as with the cloud
SDKs: a plan, a task, a mosaic or a log line holds URLs, never credentials. For S3, the SDKs'
``AWS_ENDPOINT_URL`` and GDAL's ``AWS_S3_ENDPOINT`` / ``AWS_HTTPS`` / ``AWS_VIRTUAL_HOSTING`` each
name an endpoint; whichever is given is translated for the client that does not read it, so reads
and writes reach the same server. Credentials from a profile (``AWS_PROFILE``, ``~/.aws``) reach
writes through boto3's credential chain; GDAL reads profiles itself.

**The mosaic's guarantees on an object store**, which has no rename and no directories:

- No torn chunks: a chunk is one PUT, and S3, GCS and Azure show an object only once it is whole.
  (On a local disk zarr writes a temporary file and renames it; a killed run's temporaries are
  removed on resume.)
- Order: zarr returns from a write only after every chunk's PUT has succeeded, so a block's
  manifest entry, one more PUT, always follows its chunks, and the complete-mark (a PUT of the
  root ``zarr.json``) follows every entry. The stores are strongly read-after-write consistent
  (S3 since December 2020), so a resumed run sees every entry that was written.
- A folder is a key prefix: a mosaic "exists" when a key starts with its prefix, and only a
  prefix whose root ``zarr.json`` is an fcnpipe mosaic is ever deleted (see ``mosaic.discard``).
- No conditional writes: every write is a plain PUT (``PlainWrites``), so the guarantees hold on
  servers that ignore ``If-None-Match`` and every write can be retried.

**Faults**: obstore retries refused and reset connections and 5xx answers (10 times, up to 3
minutes), and ``PlainWrites`` reads a key again when its body broke off; GDAL is given retries
(``GDAL_RETRIES``) unless the user set them, and a window whose read still fails is read again on a
fresh handle after GDAL's cache of that file is dropped (``forget_cached``). Tested through a
fault-injecting proxy: a run with a few percent of requests failing writes the clean run's bytes.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import os
import posixpath
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import obstore
import obstore.exceptions
import rasterio
from obstore.store import AzureStore, GCSStore, S3Store
from zarr.abc.store import Store
from zarr.storage import LocalStore, ObjectStore

from fcn import FcnpipeError

WRITABLE_SCHEMES = ("s3", "gs", "az")
READABLE_SCHEMES = (*WRITABLE_SCHEMES, "http", "https")
FALSE_WORDS = ("no", "false", "off", "0")


@dataclass(frozen=True, order=True)
class Location:
    """A local path or a URL, kept as the user wrote it; path-like helpers that work on both."""

    text: str

    @classmethod
    def of(cls, value: str | Path | Location) -> Location:
        """Wrap a path or URL (a Location passes through)."""
        return value if isinstance(value, Location) else cls(str(value))

    def __str__(self) -> str:
        return self.text

    @property
    def scheme(self) -> str:
        """``s3``, ``gs``, ``az``, ``http``, ``https``, or ``""`` for a local path."""
        scheme = urlsplit(self.text).scheme.lower()
        return scheme if scheme in READABLE_SCHEMES else ""

    @property
    def is_local(self) -> bool:
        """A path on this machine's file system (or a shared one)."""
        return self.scheme == ""

    @property
    def path(self) -> Path:
        """The local path; only for local locations."""
        assert self.is_local, self.text
        return Path(self.text).expanduser()

    @property
    def bucket(self) -> str:
        """The bucket (or container) of an object-store URL."""
        return urlsplit(self.text).netloc

    @property
    def key(self) -> str:
        """The object key (or key prefix) of a URL, without leading or trailing slashes."""
        return urlsplit(self.text).path.strip("/")

    @property
    def name(self) -> str:
        """The last path component."""
        return self.path.name if self.is_local else posixpath.basename(self.key)

    @property
    def stem(self) -> str:
        """The name without its suffix."""
        return self.path.stem if self.is_local else posixpath.splitext(self.name)[0]

    @property
    def suffix(self) -> str:
        """The name's suffix, e.g. ``.tif``."""
        return self.path.suffix if self.is_local else posixpath.splitext(self.name)[1]

    @property
    def parent(self) -> Location:
        """The folder or key prefix that holds this location."""
        if self.is_local:
            return Location(str(self.path.parent))
        return self.with_path(posixpath.dirname(self.key))

    def with_path(self, key: str) -> Location:
        """The same server and bucket with another key (query and fragment dropped)."""
        parts = urlsplit(self.text)
        return Location(urlunsplit((parts.scheme, parts.netloc, "/" + key.lstrip("/"), "", "")))

    def with_name(self, name: str) -> Location:
        """A sibling: the same folder or prefix, another name."""
        if self.is_local:
            return Location(str(self.path.with_name(name)))
        return self.with_path(posixpath.join(posixpath.dirname(self.key), name))

    def with_suffix(self, suffix: str) -> Location:
        """The same name with another suffix (``scene.tif`` -> ``scene.zarr``)."""
        return self.with_name(self.stem + suffix)

    def joinpath(self, name: str) -> Location:
        """A child: ``folder/name`` or ``s3://bucket/prefix/name``."""
        if self.is_local:
            return Location(str(self.path / name))
        return self.with_path(posixpath.join(self.key, name))

    def redacted(self) -> str:
        """The location without user info or query (a pre-signed URL's signature): safe to store."""
        if self.is_local:
            return self.text
        parts = urlsplit(self.text)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))


# --- configuration from the environment -----------------------------------------------------


def sdk_endpoint() -> str | None:
    """The S3 endpoint as the AWS SDKs read it from the environment, if one is set."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_endpoint() -> tuple[str | None, bool]:
    """The S3 endpoint URL the environment names (the SDKs' or GDAL's), and whether it is virtual-hosted."""
    url = sdk_endpoint()
    if url:
        return url, False
    gdal = os.environ.get("AWS_S3_ENDPOINT")
    if not gdal:
        return None, False
    https = os.environ.get("AWS_HTTPS", "YES").lower() not in FALSE_WORDS
    virtual = os.environ.get("AWS_VIRTUAL_HOSTING", "TRUE").lower() not in FALSE_WORDS
    url = gdal if "://" in gdal else f"{'https' if https else 'http'}://{gdal}"
    return url, virtual


GDAL_RETRIES = {"GDAL_HTTP_MAX_RETRY": "6", "GDAL_HTTP_RETRY_DELAY": "0.5"}
"""GDAL retries a request that failed with 429, 500, 502, 503 or 504 or whose connection broke,
waiting 0.5 s doubling (about 30 s in all); its default is not to retry. The user's values win."""


def gdal_env(location: Location) -> rasterio.Env:
    """The GDAL environment to open ``location`` in.

    For a URL: never list the bucket "folder" to open one file (GDAL would, looking for sidecar
    files), and the SDKs' ``AWS_ENDPOINT_URL`` as GDAL's own variables, unless those are set.
    """
    if location.is_local:
        return rasterio.Env()
    options = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    for name, value in GDAL_RETRIES.items():  # a failed range request is tried again, as obstore does
        if name not in os.environ:
            options[name] = value
    if location.scheme == "az":
        options |= gdal_azure_options(azure_settings())
    if location.scheme == "gs":
        options |= gdal_gcs_options(gcs_settings())
    url = sdk_endpoint()
    if url and not os.environ.get("AWS_S3_ENDPOINT"):
        parts = urlsplit(url)
        options |= {
            "AWS_S3_ENDPOINT": parts.netloc + parts.path.rstrip("/"),
            "AWS_HTTPS": "NO" if parts.scheme == "http" else "YES",
            "AWS_VIRTUAL_HOSTING": "FALSE",  # path-style, as the SDKs address a custom endpoint
        }
    return rasterio.Env(**options)


VSI_PREFIX = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}


def gdal_path(location: Location) -> str:
    """The name GDAL gives a URL (``s3://b/k`` is ``/vsis3/b/k``; ``https://…`` ``/vsicurl/https://…``)."""
    prefix = VSI_PREFIX.get(location.scheme)
    return f"{prefix}{location.bucket}/{location.key}" if prefix else f"/vsicurl/{location.text}"


def forget_cached(location: Location) -> None:
    """Drop what GDAL's network cache holds of ``location``, before reading it again.

    A response body cut short mid-transfer stays in GDAL's /vsicurl/ cache as if the file ended
    there, so every later read of that region fails, on any handle; rasterio does not wrap GDAL's
    ``VSICurlPartialClearCache``, so it is called in the GDAL library rasterio loaded.
    """
    library = gdal_library()
    if library is not None and not location.is_local:
        with gdal_env(location):  # GDAL finds the cached entries by URL, made from these settings
            library.VSICurlPartialClearCache(gdal_path(location).encode())


@functools.cache
def gdal_library() -> ctypes.CDLL | None:
    """The GDAL library this process loaded for rasterio (its wheels bundle their own), or None."""
    import rasterio._env  # noqa: F401  (loads it)

    maps = Path("/proc/self/maps")
    loaded = [line.split()[-1] for line in maps.read_text().splitlines()] if maps.is_file() else []
    candidates = [p for p in loaded if Path(p).name.startswith("libgdal")]
    candidates.sort(key=lambda p: "rasterio" not in p)  # pyogrio's wheels bundle another GDAL
    found = ctypes.util.find_library("gdal")  # elsewhere than Linux
    for candidate in candidates or ([found] if found else []):
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            continue
    return None


AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azure's storage emulator (Azurite) serves this account with this key: public, documented values."""


@dataclass(frozen=True)
class AzureSettings:
    """Azure Blob settings from the environment, under whichever names the user set them."""

    account: str | None
    key: str | None
    endpoint: str | None  # a blob endpoint other than Azure's (an emulator, a private endpoint)


def azure_settings() -> AzureSettings:
    """Azure's account, key and endpoint, under whichever names the user set them.

    As obstore names them (``AZURE_STORAGE_ACCOUNT_NAME``, ``AZURE_STORAGE_ACCOUNT_KEY``,
    ``AZURE_STORAGE_ENDPOINT``, ``AZURE_STORAGE_USE_EMULATOR``), as GDAL and the Azure CLI do
    (``AZURE_STORAGE_ACCOUNT``, ``AZURE_STORAGE_ACCESS_KEY``), or in
    ``AZURE_STORAGE_CONNECTION_STRING``; the first found wins.
    """
    env = os.environ
    text = env.get("AZURE_STORAGE_CONNECTION_STRING", "")
    parts = dict(item.split("=", 1) for item in text.split(";") if "=" in item)
    emulator = (
        env.get("AZURE_STORAGE_USE_EMULATOR", "").lower() in ("1", "true", "yes", "on")
        or parts.get("UseDevelopmentStorage", "").lower() == "true"
    )
    account = (env.get("AZURE_STORAGE_ACCOUNT_NAME") or env.get("AZURE_STORAGE_ACCOUNT")
               or parts.get("AccountName") or (AZURITE_ACCOUNT if emulator else None))  # fmt: skip
    key = (env.get("AZURE_STORAGE_ACCOUNT_KEY") or env.get("AZURE_STORAGE_ACCESS_KEY")
           or parts.get("AccountKey") or (AZURITE_KEY if emulator else None))  # fmt: skip
    endpoint = (env.get("AZURE_STORAGE_ENDPOINT") or env.get("AZURE_ENDPOINT") or parts.get("BlobEndpoint")
                or (f"http://127.0.0.1:10000/{account}" if emulator else None))  # fmt: skip
    return AzureSettings(account, key, endpoint.rstrip("/") if endpoint else None)


def gdal_azure_options(azure: AzureSettings) -> dict[str, str]:
    """The settings GDAL's /vsiaz/ reads, for what the user set under other names (none it has)."""
    env = os.environ
    if env.get("AZURE_STORAGE_CONNECTION_STRING") or azure.account is None:
        return {}  # GDAL reads the connection string itself; without an account there is nothing to add
    if azure.endpoint and azure.key:  # only a connection string carries an endpoint to GDAL
        scheme = urlsplit(azure.endpoint).scheme or "https"
        return {"AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol={scheme};AccountName="
                f"{azure.account};AccountKey={azure.key};BlobEndpoint={azure.endpoint};"}  # fmt: skip
    options = {} if env.get("AZURE_STORAGE_ACCOUNT") else {"AZURE_STORAGE_ACCOUNT": azure.account}
    if azure.key and not env.get("AZURE_STORAGE_ACCESS_KEY"):
        options["AZURE_STORAGE_ACCESS_KEY"] = azure.key
    return options


def azure_store(container: str, prefix: str) -> AzureStore:
    """An Azure Blob store for ``container``/``prefix``, configured from the environment."""
    azure = azure_settings()
    options: dict[str, Any] = {}
    if azure.account:
        options["account_name"] = azure.account
    if azure.key:
        options["account_key"] = azure.key
    if azure.endpoint:
        options["endpoint"] = azure.endpoint
        if azure.endpoint.startswith("http://"):
            options["client_options"] = {"allow_http": True}
    return AzureStore(container, prefix=prefix or None, **options)


@dataclass(frozen=True)
class GcsSettings:
    """Google Cloud Storage settings from the environment, under whichever names the user set them."""

    endpoint: str | None  # another server than Google's (an emulator)
    anonymous: bool  # send requests unsigned (public buckets, emulators)


def gcs_settings() -> GcsSettings:
    """Google Cloud Storage's endpoint, and whether to sign requests, under whichever names are set.

    The endpoint as obstore (``GOOGLE_BASE_URL``), GDAL (``CPL_GS_ENDPOINT``) or Google's SDKs
    (``STORAGE_EMULATOR_HOST``, for an emulator) name it; unsigned with ``GOOGLE_SKIP_SIGNATURE``
    or ``GS_NO_SIGN_REQUEST``, and for an emulator without credentials, as the SDKs do.
    Credentials themselves (``GOOGLE_APPLICATION_CREDENTIALS``) both clients read.
    """
    env = os.environ
    emulator = env.get("STORAGE_EMULATOR_HOST")
    if emulator and "://" not in emulator:
        emulator = f"http://{emulator}"
    endpoint = env.get("GOOGLE_BASE_URL") or env.get("CPL_GS_ENDPOINT") or emulator
    anonymous = (
        env.get("GOOGLE_SKIP_SIGNATURE", "").lower() in ("1", "true", "yes", "on")
        or env.get("GS_NO_SIGN_REQUEST", "").lower() in ("1", "true", "yes", "on")
        or bool(emulator and not env.get("GOOGLE_APPLICATION_CREDENTIALS"))
    )
    return GcsSettings(endpoint.rstrip("/") if endpoint else None, anonymous)


def gdal_gcs_options(gcs: GcsSettings) -> dict[str, str]:
    """The settings GDAL's /vsigs/ reads, for what the user set under other names (none it has)."""
    options = {}
    if gcs.endpoint and not os.environ.get("CPL_GS_ENDPOINT"):
        options["CPL_GS_ENDPOINT"] = gcs.endpoint + "/"
    if gcs.anonymous and not os.environ.get("GS_NO_SIGN_REQUEST"):
        options["GS_NO_SIGN_REQUEST"] = "YES"
    return options


def gcs_store(bucket: str, prefix: str) -> GCSStore:
    """A Google Cloud Storage store for ``bucket``/``prefix``, configured from the environment."""
    gcs = gcs_settings()
    options: dict[str, Any] = {}
    if gcs.endpoint:
        options["base_url"] = gcs.endpoint
        if gcs.endpoint.startswith("http://"):
            options["client_options"] = {"allow_http": True}
    if gcs.anonymous:
        options["skip_signature"] = True
        if os.environ.get("STORAGE_EMULATOR_HOST"):  # obstore asks for a token even unsigned: any will do
            options["bearer_token"] = "emulator"
    return GCSStore(bucket, prefix=prefix or None, **options)


def s3_store(bucket: str, prefix: str) -> S3Store:
    """An S3 store for ``bucket``/``prefix``, configured from the environment."""
    options: dict[str, Any] = {}
    endpoint, virtual = s3_endpoint()
    if endpoint:
        options |= {"endpoint": endpoint, "virtual_hosted_style_request": virtual}
        if endpoint.startswith("http://"):
            options["client_options"] = {"allow_http": True}
    if not os.environ.get("AWS_ACCESS_KEY_ID"):
        provider = boto3_credentials()
        if provider is not None:
            options["credential_provider"] = provider
    return S3Store(bucket, prefix=prefix or None, **options)


def boto3_credentials() -> Any:
    """boto3's credential chain (profiles, SSO, roles) for obstore, when it finds credentials."""
    import boto3
    from obstore.auth.boto3 import Boto3CredentialProvider

    session = boto3.Session()
    if session.get_credentials() is None:
        return None  # obstore's own chain: instance metadata, web identity, or anonymous
    return Boto3CredentialProvider(session)


def object_store(location: Location) -> Any:
    """The obstore store whose root is ``location``, a bucket or container and a key prefix."""
    scheme, bucket, key = location.scheme, location.bucket, location.key
    if scheme == "s3":
        return s3_store(bucket, key)
    if scheme == "gs":
        return gcs_store(bucket, key)
    if scheme == "az":
        return azure_store(bucket, key)
    raise AssertionError(f"not an object-store URL: {location.redacted()}")


def check_writable(location: Location) -> None:
    """Refuse, in one sentence, a location that cannot be written (an HTTP URL)."""
    if not location.is_local and location.scheme not in WRITABLE_SCHEMES:
        raise FcnpipeError(
            f"cannot write to {location.redacted()}: outputs go to a local path or to "
            f"{', '.join(s + '://' for s in WRITABLE_SCHEMES)}."
        )


class PlainWrites(ObjectStore):  # type: ignore[type-arg]
    """zarr's ObjectStore, with every write a plain PUT: no guarantee rests on conditional writes.

    zarr writes the metadata of implicit parent groups "only if absent", as a conditional PUT
    (``If-None-Match: *``). A server that ignores the header (s3rver; some S3-compatible stores)
    then overwrites the group fcnpipe wrote just before with an empty one, dropping its
    georeferencing; and object_store does not retry a conditional PUT whose connection was reset,
    as it cannot know whether it landed. Here "only if absent" is a HEAD, then a plain PUT if the
    key is missing: a PUT overwrites idempotently and is retried through faults. The check and the
    write are not one atomic step, which is enough: a mosaic's metadata has one writer, the
    process that plans it, and workers write only chunks and manifest entries, each its own key.
    """

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        """Write ``value`` at ``key`` unless the key exists (a HEAD, then a plain PUT)."""
        if not await self.exists(key):
            await self.set(key, value)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        """Read as zarr does, again when an answer's body broke off.

        object_store retries a request up to its answer's headers; a connection reset mid-body
        is raised at once.
        """
        for attempt in range(BODY_RETRIES + 1):
            try:
                return await super().get(key, prototype, byte_range)
            except obstore.exceptions.GenericError:
                if attempt == BODY_RETRIES:
                    raise
                await asyncio.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    async def list(self) -> AsyncGenerator[str, None]:
        """Every key, listed again from the start if an answer's body broke off."""
        for key in await listed_again(super().list):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncGenerator[str, None]:
        """The keys under ``prefix``, listed again from the start if an answer's body broke off."""
        for key in await listed_again(lambda: super(PlainWrites, self).list_prefix(prefix)):
            yield key

    async def list_dir(self, prefix: str) -> AsyncGenerator[str, None]:
        """The names directly under ``prefix``, listed again if an answer's body broke off."""
        for key in await listed_again(lambda: super(PlainWrites, self).list_dir(prefix)):
            yield key


async def listed_again(listing: Callable[[], AsyncGenerator[str, None]]) -> list[str]:
    """All that ``listing`` yields, started again when a page's body broke off.

    A listing is read whole before its keys are used, so a retry never yields a key twice.
    """
    for attempt in range(BODY_RETRIES + 1):
        try:
            return [key async for key in listing()]
        except obstore.exceptions.GenericError:
            if attempt == BODY_RETRIES:
                raise
            await asyncio.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


BODY_RETRIES = 4
"""Reads or listings again after a broken body, waiting 0.1 s doubling (1.5 s in all)."""


def zarr_store(location: Location, *, read_only: bool) -> Store:
    """The zarr v3 store at ``location``: LocalStore on a disk, ObjectStore on a bucket."""
    if location.is_local:
        return LocalStore(location.path, read_only=read_only)
    if not read_only:
        check_writable(location)
    return PlainWrites(object_store(location), read_only=read_only)


# --- errors: one sentence, never the server's text (it can echo signed headers) ---------------


def error_code(exc: BaseException) -> str:
    """The service's error code in an obstore error (``NoSuchBucket``), or ``""``."""
    match = re.search(r"<Code>(\w+)</Code>", str(exc))
    return match.group(1) if match else ""


def describe_error(location: Location, exc: BaseException) -> str:
    """One sentence for a failed access to ``location``; it names no credential, only where to look."""
    where = location.redacted()
    code = error_code(exc)
    if code in ("NoSuchBucket", "ContainerNotFound"):
        kind = "container" if code == "ContainerNotFound" else "bucket"
        return f"{where}: the {kind} {location.bucket!r} does not exist."
    if code in ("NoSuchKey", "NotFound") or isinstance(exc, FileNotFoundError):
        return f"{where} does not exist."
    refused = ("PermissionDenied", "Unauthenticated", "AccessDenied", "SignatureDoesNotMatch",
               "InvalidAccessKeyId", "ExpiredToken", "InvalidToken")  # fmt: skip
    if code in refused or type(exc).__name__ in ("PermissionDeniedError", "UnauthenticatedError"):
        reason = f" ({code})" if code else ""
        return (
            f"{where}: the storage service refused these credentials{reason}; check "
            f"{credential_hint(location)}."
        )
    if code in BUSY:
        return (
            f"{where}: the storage service kept answering {code} through every retry (it is "
            "overloaded or down); run the same command again once it answers."
        )
    return f"cannot reach {where} ({type(exc).__name__}{f': {code}' if code else ''})."


BUSY = ("SlowDown", "ServiceUnavailable", "InternalError", "ServerBusy", "OperationTimedOut",
        "RequestTimeout")  # fmt: skip
"""Error codes of a service that is busy or down (S3's, Azure's), answered after the client's retries."""


def credential_hint(location: Location) -> str:
    """Where credentials for ``location``'s service are set."""
    return {
        "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
        "gs": "GOOGLE_APPLICATION_CREDENTIALS",
        "az": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_CONNECTION_STRING)",
    }.get(location.scheme, "the URL")


@contextmanager
def access(location: Location) -> Iterator[None]:
    """Turn a failed object-store access into one sentence about ``location``."""
    if location.is_local:
        yield
        return
    try:
        yield
    except FcnpipeError:
        raise
    except Exception as exc:  # obstore raises builtin and obstore.exceptions errors alike
        raise FcnpipeError(describe_error(location, exc)) from None


def probe(location: Location) -> None:
    """Check that a file or object exists and can be read; raise one sentence if not."""
    if location.is_local:
        if not location.path.exists():
            raise FcnpipeError(f"{location} does not exist.")
        return
    if location.scheme in ("http", "https"):
        http_get(location, first_byte_only=True)
        return
    try:  # a GET, not a HEAD: a HEAD's error has no body to say why (no key? no bucket? refused?)
        obstore.get_range(object_store(location.parent), location.name, start=0, length=1)
    except Exception as exc:
        if error_code(exc) != "InvalidRange":  # an empty object exists; it is just not a raster
            raise FcnpipeError(describe_error(location, exc)) from None


# --- objects and folders ------------------------------------------------------------------------


def exists(location: Location) -> bool:
    """A file or object is there, or (for a folder or prefix) anything under it."""
    if location.is_local:
        return location.path.exists()
    with access(location):
        return bool(list_keys(location, limit=1))


def is_file(location: Location) -> bool:
    """A file or object is at ``location`` (a missing bucket is an error, not a "no")."""
    if location.is_local:
        return location.path.is_file()
    try:
        obstore.head(object_store(location.parent), location.name)
    except FileNotFoundError:
        return False
    except Exception as exc:
        raise FcnpipeError(describe_error(location, exc)) from None
    return True


def list_keys(prefix: Location, *, limit: int | None = None) -> list[str]:
    """Keys under ``prefix`` (recursive), relative to it."""
    store = object_store(prefix)
    for attempt in range(BODY_RETRIES + 1):  # again from the start when a page's body broke off
        keys: list[str] = []
        try:
            for batch in obstore.list(store, chunk_size=1000):
                keys.extend(item["path"] for item in batch)
                if limit is not None and len(keys) >= limit:
                    break
        except obstore.exceptions.GenericError:
            if attempt == BODY_RETRIES:
                raise
            time.sleep(0.1 * 2**attempt)
            continue
        return keys
    raise AssertionError("unreachable")


def http_get(location: Location, *, first_byte_only: bool = False) -> bytes:
    """GET an HTTP(S) URL as given (a pre-signed URL's query included); one sentence on failure.

    ``first_byte_only`` asks for one byte: a check that works where a HEAD would not (a URL
    signed for GET refuses HEAD).
    """
    headers = {"Range": "bytes=0-0"} if first_byte_only else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(location.text, headers=headers), timeout=60) as r:
            return bytes(r.read())
    except urllib.error.HTTPError as exc:
        where = location.redacted()
        if exc.code == 404:
            raise FcnpipeError(f"{where} does not exist.") from None
        if exc.code in (401, 403):
            raise FcnpipeError(
                f"{where}: the server refused access (HTTP {exc.code}); check the URL."
            ) from None
        raise FcnpipeError(f"cannot read {where} (HTTP {exc.code}).") from None
    except (urllib.error.URLError, OSError) as exc:
        raise FcnpipeError(f"cannot reach {location.redacted()} ({type(exc).__name__}).") from None


def read_bytes(location: Location) -> bytes:
    """The whole content of a (small) file or object."""
    if location.is_local:
        return location.path.read_bytes()
    if location.scheme in ("http", "https"):
        return http_get(location)
    with access(location):
        return bytes(obstore.get(object_store(location.parent), location.name).bytes())


def write_bytes(location: Location, data: bytes) -> None:
    """Write a small file or object whole (one PUT: readers never see part of it)."""
    if location.is_local:
        location.path.write_bytes(data)
        return
    with access(location):
        obstore.put(object_store(location.parent), location.name, data)


def publish(local: Path, location: Location) -> None:
    """Move a finished local file to ``location``: a rename on disk, an upload to a bucket.

    Either way the destination appears whole or not at all (an upload becomes visible only
    when it completes), so a reader never sees a half-written export.
    """
    if location.is_local:
        os.replace(local, location.path)
        return
    with access(location):
        obstore.put(object_store(location.parent), location.name, local)
    local.unlink()


def delete_tree(location: Location, *, last: str) -> None:
    """Delete a folder or key prefix, the entry named ``last`` at the very end."""
    if location.is_local:
        root = location.path
        for child in root.iterdir():
            if child.name != last:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        root.joinpath(last).unlink(missing_ok=True)
        root.rmdir()
        return
    store = object_store(location)
    with access(location):
        keys = list_keys(location)
        first = [k for k in keys if k != last]
        for start in range(0, len(first), 1000):  # one request deletes at most 1000 keys on S3
            obstore.delete(store, first[start : start + 1000])
        if last in keys:
            obstore.delete(store, last)


def match_keys(pattern: str, keys: list[str]) -> list[str]:
    """The keys a glob matches, segment by segment: ``*`` stays inside a segment, ``**`` spans any."""

    def match(parts: list[str], names: list[str]) -> bool:
        if not parts:
            return not names
        if parts[0] == "**":
            return any(match(parts[1:], names[i:]) for i in range(len(names) + 1))
        return bool(names) and fnmatchcase(names[0], parts[0]) and match(parts[1:], names[1:])

    wanted = pattern.split("/")
    return [k for k in keys if match(wanted, k.split("/"))]


def glob(location: Location) -> list[Location]:
    """The objects a URL with wildcards names (``s3://bucket/incoming/*.tif``), sorted."""
    key = location.key
    segments = key.split("/")
    fixed = next(i for i, s in enumerate(segments) if any(c in s for c in "*?["))
    prefix = location.with_path("/".join(segments[:fixed]))
    with access(prefix):
        keys = list_keys(prefix)
    pattern = "/".join(segments[fixed:])
    return sorted(prefix.joinpath(k) for k in match_keys(pattern, keys))


def has_wildcards(location: Location) -> bool:
    """The location's path holds glob characters."""
    text = location.text if location.is_local else location.key
    return any(c in text for c in "*?[")


__all__ = [
    "Location",
    "access",
    "check_writable",
    "delete_tree",
    "describe_error",
    "exists",
    "gdal_env",
    "glob",
    "has_wildcards",
    "is_file",
    "list_keys",
    "probe",
    "publish",
    "read_bytes",
    "write_bytes",
    "zarr_store",
]
