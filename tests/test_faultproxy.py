"""The fault proxy of the storage-fault campaign does what its campaign relies on."""

from __future__ import annotations

import http.client
import socket
import time
from urllib.parse import urlsplit

import pytest

from luigi_checkpoint.storage.fs import resolve
from tests.conftest import BUCKET, S3Server
from tests.soak.faultproxy import FaultPlan, FaultProxy


def _request(server: S3Server, url: str, method: str, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request signed with ``server``'s credentials, sent to ``url`` (the proxy)."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signed = AWSRequest(method=method, url=f"{url}{path}", data=b"")
    S3SigV4Auth(Credentials(server.key, server.secret), "s3", server.region).add_auth(signed)
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, headers=dict(signed.headers.items()))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_clean_plan_forwards_requests_and_answers(s3: S3Server) -> None:
    with FaultProxy(s3.endpoint_url) as proxy:
        status, body = _request(s3, proxy.url, "GET", f"/{BUCKET}?list-type=2")
    assert status == 200 and b"ListBucketResult" in body
    assert proxy.requests == 1 and not proxy.injected


def test_http503_is_answered_by_the_proxy(s3: S3Server) -> None:
    with FaultProxy(s3.endpoint_url, FaultPlan({"http503": 1.0})) as proxy:
        status, body = _request(s3, proxy.url, "GET", f"/{BUCKET}?list-type=2")
    assert status == 503 and b"SlowDown" in body
    assert proxy.injected == {"http503": 1}


def test_reset_fails_the_request(s3: S3Server) -> None:
    with FaultProxy(s3.endpoint_url, FaultPlan({"reset": 1.0})) as proxy:
        with pytest.raises((ConnectionError, http.client.RemoteDisconnected)):
            _request(s3, proxy.url, "GET", f"/{BUCKET}?list-type=2")


def test_a_stalled_request_whose_client_hung_up_still_lands_and_is_listed_late(s3: S3Server) -> None:
    plan = FaultPlan({"stall": 1.0}, max_faults=1, stall_seconds=(1.5, 1.5))
    with FaultProxy(s3.endpoint_url, plan) as proxy:
        with pytest.raises((socket.timeout, TimeoutError)):
            _request(s3, proxy.url, "POST", f"/{BUCKET}/late.bin?uploads", timeout=0.3)
        assert not proxy.wait_idle(0.2)  # still held up
        assert proxy.wait_idle(10)
        assert proxy.late == [f"POST /{BUCKET}/late.bin?uploads HTTP/1.1"]
    location = resolve(f"s3://{BUCKET}", s3.storage_options)
    fs, _ = location.fs, location.path
    uploads = fs.call_s3("list_multipart_uploads", Bucket=BUCKET).get("Uploads", [])
    assert [u["Key"] for u in uploads] == ["late.bin"]


def test_a_stalled_request_with_a_patient_client_is_not_late(s3: S3Server) -> None:
    plan = FaultPlan({"stall": 1.0}, stall_seconds=(0.3, 0.3))
    with FaultProxy(s3.endpoint_url, plan) as proxy:
        started = time.monotonic()
        status, _ = _request(s3, proxy.url, "GET", f"/{BUCKET}?list-type=2")
        assert status == 200 and time.monotonic() - started >= 0.3
        assert proxy.wait_idle(1) and proxy.late == []
