"""S3 through boto3: one client per endpoint, and s3:// URLs split into bucket and key. Credentials come from
the environment or the usual AWS configuration (boto3's own chain), never from Lethe's settings."""

from __future__ import annotations


def s3_client(endpoint: str | None):
    """A boto3 S3 client for `endpoint` (None = AWS's own), with retries for transient errors."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def split_s3_url(url: str) -> tuple[str, str]:
    """s3://BUCKET/PREFIX -> (BUCKET, PREFIX without a trailing slash)."""
    if not url.startswith("s3://") or not url[5:].split("/")[0]:
        raise ValueError(f"not an s3://BUCKET/PREFIX URL: {url!r}")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")
