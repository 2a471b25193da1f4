#!/usr/bin/env python3
"""The races of issue 14, replayed through S3 against two running endpoint
processes (worker s3 serve) that share one database and MooseFS, with no
affinity between them.

Run by worker/tests/s3_clients.rs. Environment:
  S3_ENDPOINT, S3_ENDPOINT2  http://127.0.0.1:PORT of the two instances
  S3_KEY_ID, S3_SECRET       a key allowed S3_BUCKET
  S3_BUCKET                  a bucket to create (must not exist)
  S3_RESULTS                 file to write one JSON line per object to check
                             (bucket, key, md5, size) for the Rust side
                             (replicas, mount, garbage collection)
Prints one line per check; exits non-zero on the first failure.

A stalled part attempt is an UploadPart sent through a presigned URL with
http.client: its headers and the first MiB of its body go out (the endpoint
takes the attempt's fencing token and starts its staging file), then the
body stops until the test releases it. Ports of ceph/s3-tests cases keep
their names (test_*); where this endpoint decides otherwise than Ceph
(the newest attempt of a part wins, not the last to finish) the port checks
this endpoint's rule and says so.
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

from botocore.exceptions import ClientError

import s3_common
from s3_common import MIB, data, error_code, expect, md5, multipart_etag, ok, s3_client

ENDPOINT = os.environ["S3_ENDPOINT"]
ENDPOINT2 = os.environ["S3_ENDPOINT2"]
KEY_ID = os.environ["S3_KEY_ID"]
SECRET = os.environ["S3_SECRET"]
BUCKET = os.environ["S3_BUCKET"]
RESULTS = os.environ["S3_RESULTS"]


def client(endpoint=ENDPOINT, **config):
    return s3_client(endpoint, KEY_ID, SECRET, read_timeout=300, **config)


def record(key, body):
    with open(RESULTS, "a") as f:
        f.write(json.dumps({"bucket": BUCKET, "key": key, "md5": md5(body), "size": len(body)}) + "\n")


def get(c, key):
    return c.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def put_part(c, key, up, n, body):
    etag = c.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=n, Body=body)["ETag"]
    expect(etag.strip('"') == md5(body), f"part {n} ETag {etag} is not its md5")
    return {"PartNumber": n, "ETag": etag}


class StalledPart(threading.Thread):
    """An UploadPart whose body stops after `head` bytes until release()."""

    def __init__(self, c, key, up, n, body, head=MIB):
        super().__init__(daemon=True)
        url = c.generate_presigned_url(
            "upload_part",
            Params={"Bucket": BUCKET, "Key": key, "UploadId": up, "PartNumber": n},
            ExpiresIn=900,
        )
        self.url = urllib.parse.urlsplit(url)
        self.body, self.head = body, head
        self.sent_head = threading.Event()
        self.go = threading.Event()
        self.status, self.code, self.etag = None, None, None

    def run(self):
        conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=300)
        conn.putrequest("PUT", f"{self.url.path}?{self.url.query}", skip_accept_encoding=True)
        conn.putheader("Content-Length", str(len(self.body)))
        conn.endheaders()
        conn.send(self.body[: self.head])
        self.sent_head.set()
        self.go.wait(300)
        conn.send(self.body[self.head:])
        resp = conn.getresponse()
        self.status, text = resp.status, resp.read().decode()
        self.etag = resp.getheader("ETag")
        if resp.status >= 300:
            code = ET.fromstring(text).find("Code")
            self.code = code.text if code is not None else text

    def start_stalled(self):
        self.start()
        expect(self.sent_head.wait(60), "the stalled attempt's head was not sent")
        # The endpoint has the request head: it takes the attempt's fencing
        # token and opens its staging file before reading the body.
        time.sleep(1.0)

    def finish(self):
        self.go.set()
        self.join(300)
        expect(not self.is_alive(), "the stalled attempt never ended")


def complete(c, key, up, parts):
    return c.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up, MultipartUpload={"Parts": parts})


def wait_frozen(c, key, up, limit=60):
    """Until the upload is no longer listed as receiving parts (frozen by a Complete)."""
    deadline = time.time() + limit
    while time.time() < deadline:
        ups = c.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
        if not any(u["UploadId"] == up for u in ups):
            return
        time.sleep(0.01)
    raise AssertionError("the upload was never frozen")


def reupload_during_complete(c):
    # Three parts whose sizes force a copy assembly (not multiples of
    # 64 MiB): the completion reads and writes 40 MiB under the session lock.
    key = "races/reupload-during-complete"
    parts = [data(16 * MIB, 100), data(16 * MIB, 101), data(8 * MIB + 5, 102)]
    up = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    listed = [put_part(c, key, up, i, p) for i, p in enumerate(parts, start=1)]
    # A retry of part 2 with other bytes starts before Complete (its
    # token is newer than the committed attempt's) and stalls.
    retry = StalledPart(c, key, up, 2, data(16 * MIB, 103))
    retry.start_stalled()
    result = {}

    def run_complete():
        try:
            result["etag"] = complete(client(), key, up, listed)["ETag"]
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    t = threading.Thread(target=run_complete)
    t.start()
    wait_frozen(c, key, up)
    completing = t.is_alive()
    retry.finish()
    t.join(300)
    expect("etag" in result, f"Complete failed: {result.get('error')}")
    expect(result["etag"] == multipart_etag(parts), f"Complete ETag {result['etag']}")
    expect(retry.status == 404 and retry.code == "NoSuchUpload",
           f"the retry that ended after the freeze: {retry.status} {retry.code}")
    whole = b"".join(parts)
    expect(get(c, key) == whole, "the object is the parts Complete froze")
    record(key, whole)
    ok(f"part re-uploaded while Complete runs (released {'during' if completing else 'after'} the "
       "completion): the object is the frozen parts, the late attempt NoSuchUpload")


def resend_first_finishes_last(c, c2):
    # ceph/s3-tests: two writes of one part, the first finishes last. Ceph
    # keeps the last to finish; here the newest attempt (fencing token)
    # wins and the stalled older one is refused, whether it ends before the
    # Complete (OperationAborted) or after it (NoSuchUpload).
    key = "races/resend_first_finishes_last"
    up = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    first = StalledPart(c, key, up, 1, data(5 * MIB, 110))
    first.start_stalled()
    resent = data(5 * MIB, 111)
    listed = [put_part(c2, key, up, 1, resent), put_part(c, key, up, 2, data(1234, 112))]
    complete(c2, key, up, listed)
    first.finish()
    expect(first.status == 404 and first.code == "NoSuchUpload",
           f"the first attempt, finishing after the Complete: {first.status} {first.code}")
    whole = resent + data(1234, 112)
    expect(get(c, key) == whole and get(c2, key) == whole, "the object has the resent part")
    record(key, whole)

    key2 = "races/resend_first_finishes_last-before-complete"
    up = c.create_multipart_upload(Bucket=BUCKET, Key=key2)["UploadId"]
    first = StalledPart(c2, key2, up, 1, data(5 * MIB, 113))
    first.start_stalled()
    resent = data(5 * MIB, 114)
    p1 = put_part(c, key2, up, 1, resent)
    first.finish()
    expect(first.status == 409 and first.code == "OperationAborted",
           f"the first attempt, finishing after its retry: {first.status} {first.code}")
    parts = c.list_parts(Bucket=BUCKET, Key=key2, UploadId=up)["Parts"]
    expect([(p["PartNumber"], p["ETag"]) for p in parts] == [(1, p1["ETag"])], f"ListParts {parts}")
    stale = {"PartNumber": 1, "ETag": f'"{md5(data(5 * MIB, 113))}"'}
    expect(error_code(lambda: complete(c, key2, up, [stale])) == "InvalidPart",
           "the stale attempt's ETag is not a part")
    complete(c, key2, up, [p1])
    expect(get(c2, key2) == resent, "the object has the retry's bytes")
    record(key2, resent)
    ok("test_multipart_resend_first_finishes_last (the newest attempt wins; the stalled first is refused "
       "before and after Complete)")


def atomic_multipart_upload_write(c, c2):
    key = "races/atomic_multipart_upload_write"
    c.put_object(Bucket=BUCKET, Key=key, Body=b"bar")
    up = c2.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    expect(get(c, key) == b"bar", "an upload started does not change the object")
    put_part(c2, key, up, 1, data(5 * MIB, 120))
    expect(get(c2, key) == b"bar", "nor does a part")
    c.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up)
    expect(get(c, key) == b"bar" and get(c2, key) == b"bar", "nor does its abort")
    record(key, b"bar")
    ok("test_atomic_multipart_upload_write")


def reupload_checksum_and_etag(c, c2):
    # ceph/s3-tests: three 5 MiB parts of 'A', 'B', 'C' with SHA-256
    # checksums, S3's known values; part 2 first uploaded with other bytes
    # and re-uploaded; the object's COMPOSITE SHA-256, S3's known value, on
    # both instances.
    key = "races/reupload_checksum_and_etag"
    size = 5 * MIB
    bodies = [b"A" * size, b"B" * size, b"C" * size]
    sums = ["275VF5loJr1YYawit0XSHREhkFXYkkPKGuoK0x9VKxI=",
            "mrHwOfjTL5Zwfj74F05HOQGLdUb7E5szdCbxgUSq6NM=",
            "Vw7oB/nKQ5xWb3hNgbyfkvDiivl+U+/Dft48nfJfDow="]
    composite = "uWBwpe1dxI4Vw8Gf0X9ynOdw/SS6VBzfWm9giiv1sf4=-3"
    up = c.create_multipart_upload(Bucket=BUCKET, Key=key, ChecksumAlgorithm="SHA256")["UploadId"]

    def upload(cl, n, body, checksum=None):
        kw = {"ChecksumSHA256": checksum} if checksum else {}
        return cl.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=n, Body=body,
                              ChecksumAlgorithm="SHA256", **kw)

    r1 = upload(c, 1, bodies[0], sums[0])
    wrong = upload(c2, 2, b"D" * size)
    r2 = upload(c, 2, bodies[1], sums[1])
    r3 = upload(c2, 3, bodies[2], sums[2])
    for r, s, b in ((r1, sums[0], bodies[0]), (r2, sums[1], bodies[1]), (r3, sums[2], bodies[2])):
        expect(r.get("ChecksumSHA256") == s, f"part checksum {r.get('ChecksumSHA256')} != {s}")
        expect(r["ETag"].strip('"') == md5(b), "part ETag")
    expect(error_code(lambda: upload(c, 2, bodies[1], sums[0])) == "BadDigest", "a wrong SHA-256 is BadDigest")
    parts = [{"PartNumber": i + 1, "ETag": r["ETag"], "ChecksumSHA256": s}
             for i, (r, s) in enumerate(zip((r1, r2, r3), sums))]
    stale = list(parts)
    stale[1] = {"PartNumber": 2, "ETag": wrong["ETag"]}
    expect(error_code(lambda: complete(c, key, up, stale)) == "InvalidPart", "the replaced part's ETag")
    res1 = complete(c, key, up, parts)
    expect(res1["ETag"].strip('"') == "b2add96cc9702bbf4efb0ccdfc6b7747-3", f"composite ETag {res1['ETag']}")
    expect(res1.get("ChecksumSHA256") == composite, f"composite SHA-256 {res1.get('ChecksumSHA256')}")
    res2 = complete(c2, key, up, parts)
    expect(res2["ETag"] == res1["ETag"] and res2.get("ChecksumSHA256") == composite,
           "a repeated Complete (on the other instance) answers the same ETag and checksum")
    whole = b"".join(bodies)
    expect(get(c2, key) == whole, "the object is A, B, C")
    record(key, whole)
    ok("test_multipart_reupload_checksum_and_etag (part SHA-256, the composite ETag and SHA-256 S3 computes)")


def two_instances(c, c2):
    # The parts of one upload sent alternately to both instances, completed
    # on either; ListParts and the read answered by both.
    for name, completer in (("on-2", c2), ("on-1", c)):
        key = f"two-instances/{name}.bin"
        parts = [data(5 * MIB + i, 130 + i) for i in range(6)] + [data(777, 139)]
        up = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        listed = [put_part(c if i % 2 else c2, key, up, i, p) for i, p in enumerate(parts, start=1)]
        for cl in (c, c2):
            lp = cl.list_parts(Bucket=BUCKET, Key=key, UploadId=up)["Parts"]
            expect([(p["PartNumber"], p["ETag"]) for p in lp] == [(p["PartNumber"], p["ETag"]) for p in listed],
                   f"ListParts on both instances: {lp}")
        r = complete(completer, key, up, listed)
        expect(r["ETag"] == multipart_etag(parts), f"ETag {r['ETag']}")
        other = c if completer is c2 else c2
        expect(complete(other, key, up, listed)["ETag"] == r["ETag"], "the repeated Complete on the other instance")
        whole = b"".join(parts)
        expect(get(c, key) == whole and get(c2, key) == whole, "both instances read the object")
        record(key, whole)
    # Concurrent retries of one part on both instances: one wins, the
    # object is whichever attempt committed last by fencing token.
    key = "two-instances/concurrent-retries.bin"
    up = c.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    bodies = [data(5 * MIB, 140 + i) for i in range(4)]
    answers = {}

    def send(i):
        cl = c if i % 2 else c2
        try:
            answers[i] = cl.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=1, Body=bodies[i])["ETag"]
        except ClientError as e:
            answers[i] = e.response["Error"]["Code"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    parts = c2.list_parts(Bucket=BUCKET, Key=key, UploadId=up)["Parts"]
    expect(len(parts) == 1, f"one part 1: {parts}")
    winner = [i for i in range(4) if answers[i] == parts[0]["ETag"]]
    expect(len(winner) == 1, f"the committed part is one attempt's: {answers} {parts}")
    expect(all(answers[i] == "OperationAborted" or answers[i].startswith('"') for i in range(4)),
           f"each attempt answered its ETag or OperationAborted: {answers}")
    complete(c, key, up, [{"PartNumber": 1, "ETag": parts[0]["ETag"]}])
    expect(get(c2, key) == bodies[winner[0]], "the object is the winning attempt")
    record(key, bodies[winner[0]])
    ok("two instances, no affinity: parts alternately to both, Complete on either, concurrent retries")


def main():
    c, c2 = client(), client(ENDPOINT2)
    c.create_bucket(Bucket=BUCKET)
    c2.head_bucket(Bucket=BUCKET)
    two_instances(c, c2)
    atomic_multipart_upload_write(c, c2)
    reupload_checksum_and_etag(c, c2)
    resend_first_finishes_last(c, c2)
    reupload_during_complete(c)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED after {s3_common.checks} checks: {e}", flush=True)
        sys.exit(1)
