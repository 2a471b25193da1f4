"""What the S3 client scripts (s3_clients.py, s3_races.py) share: the check
counter and its "ok N name" lines, expectations and error codes, a boto3
client for an endpoint, the test data and the multipart ETag. Imported from the scripts' own directory (python puts it first
on sys.path)."""

import hashlib

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

MIB = 1 << 20

checks = 0


def ok(name):
    """Counts a passed check and prints it."""
    global checks
    checks += 1
    print(f"ok {checks} {name}", flush=True)


def s3_client(endpoint, key_id, secret, **config):
    """boto3 against `endpoint`: path-style, one attempt (a test sees every
    error), any further botocore Config settings."""
    cfg = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1, "mode": "standard"},
        **config,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=cfg,
    )


def md5(data):
    return hashlib.md5(data).hexdigest()


def data(n, seed):
    """n deterministic bytes, incompressible enough, cheap: repeated sha256
    blocks."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 64
    return bytes(out[:n])


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def error_code(fn):
    """The S3 error code `fn()` fails with (an AssertionError if it works)."""
    try:
        fn()
    except ClientError as e:
        return e.response["Error"]["Code"]
    raise AssertionError("expected an error, the call succeeded")


def multipart_etag(parts):
    """S3's ETag of a multipart object of these part bodies, quoted."""
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'
