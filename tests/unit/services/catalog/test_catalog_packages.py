"""The catalog's signed packages and resumable downloads, over real HTTP on loopback."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from catalog_helpers import catalog_settings, running_catalog, unique
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openfeeder.config import AccessSettings
from openfeeder.iot.agent.packages import build_package, package_sha256
from openfeeder.iot.catalog_client import (
    CatalogClient,
    CatalogRequestError,
    CatalogUnavailableError,
)
from openfeeder.iot.device_settings import AlgorithmRef
from openfeeder.security.signing import (
    NS_PER_DAY,
    KeyRing,
    generate_key_file,
    sign_package,
    verify_package,
)


def _package(tmp_path: Path, name: str, *, size_bytes: int = 0) -> bytes:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "manifest.json").write_text(
        f'{{"name": "{name}", "version": "1.0.0", "entry": "mod:Plugin"}}', encoding="utf-8"
    )
    (folder / "mod.py").write_text("class Plugin:\n    pass\n", encoding="utf-8")
    if size_bytes:
        (folder / "blob.bin").write_bytes(os.urandom(size_bytes))  # incompressible
    return build_package(folder)


class CuttingProxy:
    """A TCP proxy that closes a connection after ``limit`` bytes of the answer (a broken link)
    and counts the bytes it passed back."""

    def __init__(self, target_port: int, *, limit: int | None) -> None:
        self.limit = limit
        self.passed = 0
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self._listener:
            client, _ = self._listener.accept()
            upstream = socket.create_connection(("127.0.0.1", self._target))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            with client, upstream:
                while chunk := upstream.recv(65536):
                    if self.limit is not None and self.passed + len(chunk) > self.limit:
                        client.sendall(chunk[: self.limit - self.passed])
                        self.passed = self.limit
                        client.shutdown(socket.SHUT_RDWR)  # the link breaks mid-answer
                        return
                    client.sendall(chunk)
                    self.passed += len(chunk)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            return


def test_an_interrupted_download_continues_where_it_stopped(tmp_path: Path) -> None:
    name = unique("big")
    data = _package(tmp_path, name, size_bytes=1_500_000)
    with running_catalog(catalog_settings(tmp_path)) as catalog:
        with CatalogClient(catalog.url) as client:
            info = client.upload_algorithm(name, "1.0.0", data)
        ref = AlgorithmRef(name=name, version="1.0.0", sha256=info.sha256, url=info.url)
        partial = tmp_path / "meter" / f"{name}.zip.part"
        broken = CuttingProxy(catalog.port, limit=600_000)
        via_broken = ref.model_copy(
            update={"url": info.url.replace(str(catalog.port), str(broken.port))}
        )
        with CatalogClient(catalog.url, timeout_s=10) as client:
            with pytest.raises(CatalogUnavailableError, match="to resume"):
                client.download_algorithm(via_broken, partial=partial)
            kept = partial.stat().st_size
            assert 0 < kept < len(data)
            counting = CuttingProxy(catalog.port, limit=None)
            via_counting = ref.model_copy(
                update={"url": info.url.replace(str(catalog.port), str(counting.port))}
            )
            assert client.download_algorithm(via_counting, partial=partial) == data
        assert not partial.exists()
        assert counting.passed < len(data) - kept + 4096  # only the rest, plus headers


def test_range_requests(tmp_path: Path) -> None:
    name = unique("rng")
    data = _package(tmp_path, name, size_bytes=10_000)
    with running_catalog(catalog_settings(tmp_path)) as catalog:
        with CatalogClient(catalog.url) as client:
            info = client.upload_algorithm(name, "1.0.0", data)
        tail = httpx.get(info.url, headers={"Range": "bytes=100-"})
        assert tail.status_code == 206
        assert tail.content == data[100:]
        assert tail.headers["content-range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
        last = httpx.get(info.url, headers={"Range": "bytes=-10"})
        assert last.content == data[-10:]
        stale = httpx.get(info.url, headers={"Range": "bytes=100-", "If-Range": '"other"'})
        assert stale.status_code == 200
        assert stale.content == data
        beyond = httpx.get(info.url, headers={"Range": f"bytes={len(data)}-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-range"] == f"bytes */{len(data)}"
        # superscript digits: latin-1 (so valid in a header) and str.isdigit(), not int()
        for odd in ("bytes=\u00b2-", "bytes=0-\u00b9", "bytes=-\u00b3"):
            ignored = httpx.get(info.url, headers={"Range": odd.encode("latin-1")})
            assert ignored.status_code == 200, odd  # not a range we know: the whole package
            assert ignored.content == data


def test_uploads_are_signed_or_carry_a_trusted_signature(tmp_path: Path) -> None:
    publisher = generate_key_file(tmp_path / "publisher.key")
    access = AccessSettings(publisher_keys=(tmp_path / "publisher.key.pub",))
    settings = catalog_settings(tmp_path).model_copy(update={"access": access})
    signed_here, theirs, rogue = unique("a"), unique("b"), unique("c")
    with running_catalog(settings) as catalog, CatalogClient(catalog.url) as client:
        info = client.upload_algorithm(signed_here, "1.0.0", _package(tmp_path, signed_here))
        boot = httpx.post(
            f"{catalog.url}/v1/devices/boot",
            json={"device_id": unique("m"), "device_type": "meter"},
        ).json()
        keys = KeyRing.from_texts(boot["package_keys"])
        assert len(keys) == 2  # the catalog's own and the configured publisher's
        signed = verify_package(
            info.signature,
            keys,
            name=signed_here,
            version="1.0.0",
            sha256=info.sha256,
            now_ns=time.time_ns(),
        )
        assert signed.expires_ns - signed.signed_ns == 365 * NS_PER_DAY

        data = _package(tmp_path, theirs)
        signature = sign_package(
            publisher,
            name=theirs,
            version="1.0.0",
            sha256=package_sha256(data),
            size_bytes=len(data),
            signed_ns=time.time_ns(),
            validity_ns=NS_PER_DAY,
        )
        kept = client.upload_algorithm(theirs, "1.0.0", data, signature=signature)
        assert kept.signature == signature  # kept as the publisher made it

        bad = _package(tmp_path, rogue)
        forged = sign_package(
            Ed25519PrivateKey.generate(),
            name=rogue,
            version="1.0.0",
            sha256=package_sha256(bad),
            size_bytes=len(bad),
            signed_ns=time.time_ns(),
            validity_ns=NS_PER_DAY,
        )
        with pytest.raises(CatalogRequestError) as refused:
            client.upload_algorithm(rogue, "1.0.0", bad, signature=forged)
        assert refused.value.status == 422
        assert refused.value.field == "X-Package-Signature"
        assert rogue not in {a.name for a in client.algorithms()}
