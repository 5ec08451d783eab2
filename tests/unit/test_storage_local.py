"""The object-store adapters: LocalStore on a temp dir, S3Store against moto in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlparse
from urllib.request import url2pathname

import pytest

from common.errors import ConfigError, ObjectNotFound, ObjectTooLarge, StorageError
from common.settings import Settings
from common.storage import LocalStore, S3Store, open_store, s3_client

# --- LocalStore ----------------------------------------------------------------------------


def test_local_round_trip(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    key = "conversations/c1/j1/image.png"
    assert not store.exists(key)
    store.put(key, b"\x89PNG data", "image/png")
    assert store.exists(key)
    assert store.get(key) == b"\x89PNG data"
    assert (tmp_path / key).read_bytes() == b"\x89PNG data"


def test_local_url_is_a_file_url_to_the_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b.txt", b"hello", "text/plain")
    url = store.url("a/b.txt", 60)
    parsed = urlparse(url)
    assert parsed.scheme == "file"
    assert Path(url2pathname(parsed.path)).read_bytes() == b"hello"


def test_local_overwrite_leaves_one_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k/obj.bin", b"first", "application/octet-stream")
    store.put("k/obj.bin", b"second, longer", "application/octet-stream")
    assert store.get("k/obj.bin") == b"second, longer"
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["obj.bin"]


def test_local_missing_key_is_object_not_found(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(ObjectNotFound):
        store.get("nope/missing.png")
    assert not store.exists("nope/missing.png")


def test_local_directory_is_not_an_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("dir/inner.txt", b"x", "text/plain")
    assert not store.exists("dir")
    with pytest.raises(ObjectNotFound):
        store.get("dir")


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd"])
def test_local_key_escaping_root_is_refused(tmp_path: Path, key: str) -> None:
    root = tmp_path / "store"
    store = LocalStore(root)
    with pytest.raises(StorageError):
        store.put(key, b"x", "text/plain")
    with pytest.raises(StorageError):
        store.get(key)
    with pytest.raises(StorageError):
        store.exists(key)
    assert not (tmp_path / "x").exists()


def test_local_key_too_long_for_a_file_name_is_simply_missing(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    key = "uploads/" + "a" * 400  # one path component longer than any file system allows
    assert not store.exists(key)
    with pytest.raises(ObjectNotFound):
        store.get(key)


def test_local_escape_is_not_object_not_found(tmp_path: Path) -> None:
    """Escaping the root is a refusal, not a miss a caller might treat as 'retry later'."""
    with pytest.raises(StorageError) as info:
        LocalStore(tmp_path / "store").get("../x")
    assert not isinstance(info.value, ObjectNotFound)


def test_local_put_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(3):
        store.put("a/obj.bin", bytes([i]) * 100, "application/octet-stream")
        store.put(f"a/other-{i}.bin", b"y", "application/octet-stream")
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == ["obj.bin", "other-0.bin", "other-1.bin", "other-2.bin"]


def test_local_failed_put_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(TypeError):
        store.put("a/obj.bin", "not bytes", "text/plain")  # type: ignore[arg-type]
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# --- open_store ----------------------------------------------------------------------------


def test_open_store_file_url_gives_local_store(tmp_path: Path) -> None:
    store = open_store(Settings(storage_url=f"file://{tmp_path}/data"))
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "data").resolve()
    store.put("k.txt", b"v", "text/plain")
    assert (tmp_path / "data" / "k.txt").read_bytes() == b"v"


def test_open_store_relative_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store(Settings(storage_url="file://./zq-data"))
    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "zq-data").resolve()


@pytest.mark.parametrize("url", ["ftp://host/dir", "gs://bucket/x", "/plain/path", ""])
def test_open_store_unknown_scheme(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(Settings(storage_url=url))
    assert "ZQ_STORAGE_URL" in str(info.value)


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix"])
def test_open_store_s3_without_bucket(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(Settings(storage_url=url))
    assert "bucket" in str(info.value)


# --- S3Store on moto -----------------------------------------------------------------------


@pytest.fixture
def s3_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    from moto import mock_aws

    # Fake credentials only; moto intercepts every call in-process, nothing leaves.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with mock_aws():
        yield Settings(storage_url="s3://zq-test/run-1/", s3_region="us-east-1")


def test_s3_round_trip(s3_settings: Settings) -> None:
    store = open_store(s3_settings)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("zq-test", "run-1")
    store.ensure_bucket()
    store.ensure_bucket()  # idempotent
    assert not store.exists("a/b.png")
    store.put("a/b.png", b"\x89PNG bytes", "image/png")
    assert store.exists("a/b.png")
    assert store.get("a/b.png") == b"\x89PNG bytes"
    store.put("a/b.png", b"replaced", "image/png")
    assert store.get("a/b.png") == b"replaced"
    # The prefix is part of the real key, and the content type is kept.
    head = store.client.head_object(Bucket="zq-test", Key="run-1/a/b.png")
    assert head["ContentType"] == "image/png"
    listed = store.client.list_objects_v2(Bucket="zq-test")["Contents"]
    assert [o["Key"] for o in listed] == ["run-1/a/b.png"]
    assert "s3://zq-test/run-1" in store.describe()


def test_s3_missing_key_is_object_not_found(s3_settings: Settings) -> None:
    store = S3Store(s3_client(s3_settings), "zq-test")
    store.ensure_bucket()
    with pytest.raises(ObjectNotFound):
        store.get("missing.png")
    assert not store.exists("missing.png")


def test_s3_missing_bucket_is_storage_error_not_missing_object(s3_settings: Settings) -> None:
    store = S3Store(s3_client(s3_settings), "no-such-bucket")
    with pytest.raises(StorageError) as info:
        store.put("a.png", b"x", "image/png")
    assert not isinstance(info.value, ObjectNotFound)
    with pytest.raises(StorageError) as got:
        store.get("a.png")
    assert not isinstance(got.value, ObjectNotFound)


def test_s3_presigned_url_is_sigv4(s3_settings: Settings) -> None:
    store = open_store(s3_settings)
    assert isinstance(store, S3Store)
    store.ensure_bucket()
    store.put("a/b.png", b"x", "image/png")
    url = store.url("a/b.png", 600)
    query = parse_qs(urlparse(url).query)
    assert "X-Amz-Signature" in query
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["600"]
    assert "Signature" not in query  # no SigV2 signature
    assert urlparse(url).path.endswith("run-1/a/b.png")


def test_s3_custom_endpoint_uses_path_style_and_sigv4(s3_settings: Settings) -> None:
    settings = Settings(storage_url="s3://zq-test", s3_endpoint_url="http://rgw.invalid:7480")
    store = open_store(settings)
    assert isinstance(store, S3Store)
    url = store.url("k.png", 60)
    parsed = urlparse(url)
    assert parsed.netloc == "rgw.invalid:7480"
    assert parsed.path == "/zq-test/k.png"
    assert "X-Amz-Signature" in parse_qs(parsed.query)


def test_a_get_with_a_byte_limit_refuses_larger_objects_unread(
        tmp_path: Path, s3_settings: Settings) -> None:
    s3 = S3Store(s3_client(s3_settings), "zq-test")
    s3.ensure_bucket()
    for store in (LocalStore(tmp_path), s3):
        store.put("big.png", b"x" * 1000, "image/png")
        assert store.get("big.png", max_bytes=1000) == b"x" * 1000
        with pytest.raises(ObjectTooLarge) as refused:
            store.get("big.png", max_bytes=999)
        assert (refused.value.size, refused.value.limit) == (1000, 999)
        with pytest.raises(ObjectNotFound):
            store.get("absent.png", max_bytes=10)


def test_keys_lists_the_files_under_a_folder_sorted_without_partial_writes(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for key in ("adapters/b.json", "adapters/a.json", "adapters/files/x.safetensors",
                "uploads/u.png"):
        store.put(key, b"x", "application/octet-stream")
    (tmp_path / "adapters" / ".part-123").write_bytes(b"half")
    assert store.keys("adapters/") == ["adapters/a.json", "adapters/b.json",
                                       "adapters/files/x.safetensors"]
    assert store.keys("nothing/") == []
