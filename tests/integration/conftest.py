"""Real services for integration tests: a private Redis, Ceph RGW (S3), tiny checkpoints."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import pytest
from botocore.config import Config
from fastapi.testclient import TestClient

from common.audit import audit_log
from common.layout import job_prefix
from common.settings import Settings
from common.status import JobRecord
from producer.api.app import create_app
from producer.api.auth import ApiKeys
from producer.client import Client
from tests.conftest import require
from tests.integration.cluster import Cluster
from tests.services.ceph_rgw import RgwServer, rgw_available, start_rgw
from tests.services.stall_proxy import StallProxy
from zq.embedded_redis import RedisServer, redis_executable, start_redis

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def own_redis(workdir: Path) -> Iterator[RedisServer]:
    """A Redis server of our own (never the shared one on 6379), stopped on exit."""
    require(redis_executable() is not None, "redis-server")
    server = start_redis(workdir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's Redis."""
    with own_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RgwServer]:
    """Ceph RGW: a real S3 server over HTTP that checks signatures."""
    require(rgw_available(), "Ceph RGW (scripts/install-system-deps)")
    server = start_rgw(tmp_path_factory.mktemp("rgw"))
    # boto3 reads credentials from the environment itself (Settings never carries them),
    # so in-process clients find the RGW keys where a deployment puts them.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        patch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
            patch.delenv(name, raising=False)
        yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three tiny checkpoints, built offline by the project's own code."""
    from worker.tiny_models import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("models"))


def make_bucket(rgw: RgwServer) -> str:
    """A fresh bucket on the RGW server."""
    name = f"zq-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=rgw.endpoint_url, region_name=rgw.region,
                      aws_access_key_id=rgw.access_key, aws_secret_access_key=rgw.secret_key,
                      config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket=name)
    return name


def cluster_env(redis_server: RedisServer, rgw: RgwServer, bucket: str,
                tiny_models: dict[str, Path], prefix: str) -> dict[str, str]:
    """The environment a producer and its workers share."""
    return {
        "ZQ_REDIS_URL": redis_server.url,
        "ZQ_STORAGE_URL": f"s3://{bucket}/results",
        "ZQ_S3_ENDPOINT_URL": rgw.endpoint_url,
        "ZQ_S3_REGION": rgw.region,
        "AWS_ACCESS_KEY_ID": rgw.access_key,
        "AWS_SECRET_ACCESS_KEY": rgw.secret_key,
        "ZQ_MODEL_TURBO": str(tiny_models["turbo"]),
        "ZQ_MODEL_EDIT": str(tiny_models["edit"]),
        "ZQ_MODEL_BASE": str(tiny_models["base"]),
        "ZQ_DEVICE": "cpu",
        "ZQ_LEASE_TTL_S": "3",
        "ZQ_KEY_PREFIX": prefix,
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # Several workers share 2 cores in tests; one thread each avoids oversubscription.
        "OMP_NUM_THREADS": "1",
        # Tests that scrape metrics give each worker its own port.
        "ZQ_METRICS_PORT": "0",
        # Webhook receivers in tests listen on loopback, which is refused by default.
        "ZQ_WEBHOOK_ALLOW": "127.0.0.1",
    }


def new_cluster(redis_server: RedisServer, rgw: RgwServer, tiny_models: dict[str, Path],
                logs: Path) -> Cluster:
    """A cluster with its own bucket and key prefix, sharing the session's servers."""
    # Celery queues are named per model type, so tests that share a Redis must not
    # share it at once: each cluster flushes it first.
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    prefix = f"zq{uuid.uuid4().hex[:8]}"
    env = cluster_env(redis_server, rgw, make_bucket(rgw), tiny_models, prefix)
    return Cluster(env=env, logs=logs, redis_url=redis_server.url, prefix=prefix)


def stored_names(client: Client, record: JobRecord) -> list[str]:
    """The file names stored under a job's folder in the cluster's bucket, sorted."""
    store = client.store
    listing = store.client.list_objects_v2(  # type: ignore[attr-defined]
        Bucket=store.bucket, Prefix=store._key(job_prefix(record.spec)))  # type: ignore[attr-defined]
    return sorted(item["Key"].rsplit("/", 1)[1] for item in listing.get("Contents", []))


def client_for(cluster: Cluster) -> Client:
    """A producer client configured like the cluster's workers."""
    return Client(Settings.from_env(cluster.env))


@pytest.fixture
def cluster(redis_server: RedisServer, rgw: RgwServer, tiny_models: dict[str, Path],
            tmp_path: Path) -> Iterator[Cluster]:
    """A fresh cluster (no workers started yet) for one test."""
    created = new_cluster(redis_server, rgw, tiny_models, tmp_path / "logs")
    yield created
    created.stop_all()


@pytest.fixture
def client(cluster: Cluster) -> Client:
    """A producer client for the test's cluster."""
    return client_for(cluster)


@pytest.fixture
def audit_lines() -> Iterator[list[dict[str, Any]]]:
    """Audit records logged during the test, parsed."""
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(record.getMessage()))

    handler, level = Collect(), audit_log.level
    audit_log.addHandler(handler)
    audit_log.setLevel(logging.INFO)
    yield lines
    audit_log.removeHandler(handler)
    audit_log.setLevel(level)


@pytest.fixture
def proxy(cluster: Cluster) -> Iterator[StallProxy]:
    """A proxy in front of the cluster's S3 endpoint that can stall or go down."""
    endpoint = urlparse(cluster.env["ZQ_S3_ENDPOINT_URL"])
    server = StallProxy((endpoint.hostname or "127.0.0.1", endpoint.port or 80)).start()
    yield server
    server.close()


@pytest.fixture
def settings(redis_server: RedisServer, tmp_path: Path) -> Settings:
    """A private key prefix on the session's Redis and a file store of this test's own."""
    return replace(Settings(), redis_url=redis_server.url,
                   storage_url=f"file://{tmp_path / 'store'}",
                   key_prefix=f"zqt{uuid.uuid4().hex[:8]}")


def in_process_api(settings: Settings, client: Client) -> Iterator[TestClient]:
    """The API app without keys (loopback use), served in process for one test."""
    with TestClient(create_app(settings, client, ApiKeys())) as test_client:
        yield test_client
