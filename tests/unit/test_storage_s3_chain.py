"""The S3 client leaves region and credentials to boto3's own chain (no network used)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from common.settings import Settings
from common.storage import s3_client

_AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
             "AWS_ENDPOINT_URL_S3", "ZQ_S3_REGION")


@pytest.fixture(autouse=True)
def clean_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials or config from the machine running the tests."""
    for name in _AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    # Never ask an instance metadata service for credentials.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _settings(env: dict[str, str] | None = None) -> Settings:
    return Settings.from_env({"ZQ_STORAGE_URL": "s3://bucket/prefix",
                              "ZQ_S3_ENDPOINT_URL": "http://rgw.invalid:7480", **(env or {})})


def test_session_token_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIATEMPORARY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "temporary-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "the-session-token")
    credentials = s3_client(_settings())._get_credentials()
    assert (credentials.access_key, credentials.token) == ("ASIATEMPORARY", "the-session-token")


def test_session_token_signs_presigned_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIATEMPORARY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "temporary-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "the-session-token")
    url = s3_client(_settings()).generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": "k.png"}, ExpiresIn=60)
    assert "X-Amz-Security-Token=the-session-token" in url


def test_a_named_profile_supplies_credentials(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    credentials_file = tmp_path / "credentials"
    credentials_file.write_text("[shop]\naws_access_key_id = ASIAPROFILE\n"
                                "aws_secret_access_key = profile-secret\n"
                                "aws_session_token = profile-token\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials_file))
    monkeypatch.setenv("AWS_PROFILE", "shop")
    credentials = s3_client(_settings())._get_credentials()
    assert (credentials.access_key, credentials.token) == ("ASIAPROFILE", "profile-token")


def test_aws_region_is_honoured_when_zq_s3_region_is_unset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert s3_client(_settings()).meta.region_name == "eu-central-1"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-southeast-2")
    assert s3_client(_settings()).meta.region_name == "ap-southeast-2"


def test_zq_s3_region_overrides_the_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    client = s3_client(_settings({"ZQ_S3_REGION": "us-west-2"}))
    assert client.meta.region_name == "us-west-2"


def test_unknown_profile_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with pytest.raises(ConfigError) as info:
        s3_client(_settings())
    assert "no-such-profile" in str(info.value)


def test_without_any_region_boto3_decides(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[default]\nregion = sa-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert s3_client(_settings()).meta.region_name == "sa-east-1"
