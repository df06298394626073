"""A protocol-level stand-in for Alibaba Cloud OSS (no OSS server runs here).

It speaks the subset of the OSS REST API that ``oss2`` uses for backup and restore — path-style requests
to an IP endpoint, namespace-less XML, multipart upload with list-parts, ranged GET, ``x-oss-meta-*`` user
metadata, listing a bucket by prefix (URL-encoded keys, markers, pages), create-only-if-absent writes
(``x-oss-forbid-overwrite``) — and checks what the real client sends: every request must carry a valid ``OSS`` v1 signature
(HMAC-SHA1 over the canonical string), keys arrive URL-encoded UTF-8, and every object and part comes
back with its ``x-oss-hash-crc64ecma`` so the client's CRC64 check runs for real.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit
from xml.etree import ElementTree

import crcmod

from tests.services.http import LocalServer, byte_range

# CRC-64/XZ (ECMA-182, reflected): what OSS returns in x-oss-hash-crc64ecma
_crc64 = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, xorOut=0xFFFFFFFFFFFFFFFF, rev=True)
_SUBRESOURCES = {"acl", "uploadId", "partNumber", "uploads", "bucketInfo", "location", "stat", "objectMeta",
                 "response-content-type", "response-content-disposition", "symlink", "tagging", "delete"}


@dataclass
class OssState:
    access_key_id: str
    access_key_secret: str
    buckets: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    bad_signatures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _xml(tag: str, children: dict[str, Any] | list[tuple[str, Any]]) -> bytes:
    root = ElementTree.Element(tag)
    for k, v in children.items() if isinstance(children, dict) else children:
        if isinstance(v, list):
            child = ElementTree.SubElement(root, k)
            for kk, vv in v:
                ElementTree.SubElement(child, kk).text = str(vv)
        else:
            ElementTree.SubElement(root, k).text = str(v)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ElementTree.tostring(root)


def _handler(state: OssState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        # --- plumbing -------------------------------------------------------------------------
        def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("x-oss-request-id", uuid.uuid4().hex.upper()[:24])
            self.send_header("Date", formatdate(usegmt=True))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, code: int, oss_code: str, message: str) -> None:
            self._send(code, _xml("Error", {"Code": oss_code, "Message": message, "RequestId": "0", "HostId": "standin"}),
                       {"Content-Type": "application/xml"})

        def _parse(self) -> tuple[str, str, dict[str, str]]:
            url = urlsplit(self.path)
            parts = url.path.lstrip("/").split("/", 1)
            bucket = unquote(parts[0])
            key = unquote(parts[1]) if len(parts) > 1 else ""
            return bucket, key, dict(parse_qsl(url.query, keep_blank_values=True))

        def _signed(self, bucket: str, key: str, params: dict[str, str]) -> bool:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("OSS ") or ":" not in auth:
                return False
            ak, _, signature = auth[4:].partition(":")
            oss_headers = sorted((k.lower(), v) for k, v in self.headers.items() if k.lower().startswith("x-oss-"))
            canon = "".join(f"{k}:{v}\n" for k, v in oss_headers)
            sub = sorted((k, v) for k, v in params.items() if k in _SUBRESOURCES)
            sub_str = "&".join(k if v == "" else f"{k}={v}" for k, v in sub)
            resource = f"/{bucket}/{key}" if bucket else "/"
            resource += f"?{sub_str}" if sub_str else ""
            to_sign = "\n".join([self.command, self.headers.get("Content-MD5", ""), self.headers.get("Content-Type", ""),
                                 self.headers.get("Date", ""), canon + resource])
            want = base64.b64encode(hmac.new(state.access_key_secret.encode(), to_sign.encode(), hashlib.sha1).digest()).decode()
            return ak == state.access_key_id and hmac.compare_digest(want, signature)

        def _begin(self) -> tuple[str, str, dict[str, str]] | None:
            bucket, key, params = self._parse()
            with state.lock:
                state.requests.append((self.command, self.path))
            if not self._signed(bucket, key, params):
                with state.lock:
                    state.bad_signatures += 1
                self._error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match")
                return None
            return bucket, key, params

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

        # --- verbs ----------------------------------------------------------------------------
        def do_PUT(self) -> None:
            data = self._body()
            parsed = self._begin()
            if parsed is None:
                return
            bucket, key, params = parsed
            if not key:
                with state.lock:
                    if bucket in state.buckets:
                        self._error(409, "BucketAlreadyExists", "exists")
                        return
                    state.buckets[bucket] = {}
                self._send(200)
                return
            if bucket not in state.buckets:
                self._error(404, "NoSuchBucket", bucket)
                return
            crc = str(_crc64(data))
            etag = f'"{hashlib.md5(data).hexdigest().upper()}"'
            if "uploadId" in params:
                up = state.uploads.get(params["uploadId"])
                if up is None:
                    self._error(404, "NoSuchUpload", params["uploadId"])
                    return
                up["parts"][int(params["partNumber"])] = {"data": data, "etag": etag, "crc": crc}
            elif self.headers.get("x-oss-copy-source"):  # CopyObject: /bucket/key (URL-quoted), same region
                src_bucket, _, src_key = unquote(self.headers["x-oss-copy-source"]).lstrip("/").partition("/")
                with state.lock:
                    source = state.buckets.get(src_bucket, {}).get(src_key)
                    if source is None:
                        self._error(404, "NoSuchKey", src_key)
                        return
                    replace = self.headers.get("x-oss-metadata-directive", "COPY").upper() == "REPLACE"
                    meta = ({k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-oss-meta-")}
                            if replace else dict(source["meta"]))
                    state.buckets[bucket][key] = {**source, "meta": meta, "mtime": time.time()}
                    etag = source["etag"]
                body = _xml("CopyObjectResult", {"ETag": etag, "LastModified": "now"})
                self._send(200, body, {"ETag": etag, "Content-Type": "application/xml"})
                return
            else:
                meta = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-oss-meta-")}
                with state.lock:  # x-oss-forbid-overwrite: create only if absent, checked and written at once
                    if self.headers.get("x-oss-forbid-overwrite", "").lower() == "true" and key in state.buckets[bucket]:
                        self._error(409, "FileAlreadyExists", "The object you specified already exists.")
                        return
                    state.buckets[bucket][key] = {"data": data, "etag": etag, "crc": crc, "meta": meta,
                                                  "mtime": time.time()}
            self._send(200, headers={"ETag": etag, "x-oss-hash-crc64ecma": crc})

        def do_POST(self) -> None:
            data = self._body()
            parsed = self._begin()
            if parsed is None:
                return
            bucket, key, params = parsed
            if "uploads" in params:
                upload_id = uuid.uuid4().hex.upper()
                meta = {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-oss-meta-")}
                state.uploads[upload_id] = {"bucket": bucket, "key": key, "parts": {}, "meta": meta}
                self._send(200, _xml("InitiateMultipartUploadResult", {"Bucket": bucket, "Key": key, "UploadId": upload_id}),
                           {"Content-Type": "application/xml"})
            elif "uploadId" in params:
                up = state.uploads.pop(params["uploadId"], None)
                if up is None:
                    self._error(404, "NoSuchUpload", params["uploadId"])
                    return
                root = ElementTree.fromstring(data)
                numbers = [int(p.findtext("PartNumber")) for p in root.iter("Part")]
                blob = b"".join(up["parts"][n]["data"] for n in numbers)
                crc = str(_crc64(blob))
                etag = f'"{hashlib.md5(blob).hexdigest().upper()}-{len(numbers)}"'
                state.buckets[bucket][key] = {"data": blob, "etag": etag, "crc": crc, "meta": up["meta"],
                                              "mtime": time.time()}
                self._send(200, _xml("CompleteMultipartUploadResult", {"Bucket": bucket, "Key": key, "ETag": etag}),
                           {"Content-Type": "application/xml", "x-oss-hash-crc64ecma": crc, "ETag": etag})
            else:
                self._error(400, "InvalidArgument", "unsupported POST")

        def do_GET(self) -> None:
            parsed = self._begin()
            if parsed is None:
                return
            bucket, key, params = parsed
            if "uploadId" in params:
                up = state.uploads.get(params["uploadId"])
                if up is None:
                    self._error(404, "NoSuchUpload", params["uploadId"])
                    return
                parts = [("Part", [("PartNumber", n), ("LastModified", "2026-11-27T00:00:00.000Z"), ("ETag", p["etag"]),
                                   ("Size", len(p["data"])), ("HashCrc64ecma", p["crc"])])
                         for n, p in sorted(up["parts"].items())]
                body = _xml("ListPartsResult", [("Bucket", bucket), ("Key", key), ("UploadId", params["uploadId"]),
                                                ("NextPartNumberMarker", 0), ("MaxParts", 1000), ("IsTruncated", "false"),
                                                *parts])
                self._send(200, body, {"Content-Type": "application/xml"})
                return
            if not key:
                self._list(bucket, params)
                return
            self._object(bucket, key)

        def _list(self, bucket: str, params: dict[str, str]) -> None:
            """GetBucket (ListObjects): keys after ``marker`` under ``prefix``, ``max-keys`` a page."""
            if bucket not in state.buckets:
                self._error(404, "NoSuchBucket", bucket)
                return
            prefix, marker = params.get("prefix", ""), params.get("marker", "")
            limit = int(params.get("max-keys") or 100)
            url = params.get("encoding-type") == "url"
            with state.lock:
                keys = sorted(k for k in state.buckets[bucket] if k.startswith(prefix) and k > marker)
                page = [(k, state.buckets[bucket][k]) for k in keys[:limit]]
            enc = (lambda k: quote(k, safe="")) if url else (lambda k: k)
            truncated = len(keys) > limit
            body = _xml("ListBucketResult", [
                ("Name", bucket), ("Prefix", enc(prefix)), ("Marker", enc(marker)), ("MaxKeys", limit), ("Delimiter", ""),
                *([("EncodingType", "url")] if url else []), ("IsTruncated", str(truncated).lower()),
                *([("NextMarker", enc(page[-1][0]))] if truncated else []),
                *[("Contents", [("Key", enc(k)), ("LastModified", time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                                                                                 time.gmtime(o["mtime"]))),
                                ("ETag", o["etag"]), ("Type", "Normal"), ("Size", len(o["data"])),
                                ("StorageClass", "Standard")]) for k, o in page],
            ])
            self._send(200, body, {"Content-Type": "application/xml"})

        def do_DELETE(self) -> None:
            parsed = self._begin()
            if parsed is None:
                return
            bucket, key, _ = parsed
            with state.lock:
                state.buckets.get(bucket, {}).pop(key, None)
            self._send(204)

        def do_HEAD(self) -> None:
            parsed = self._begin()
            if parsed is not None:
                self._object(*parsed[:2])

        def _object(self, bucket: str, key: str) -> None:
            obj = state.buckets.get(bucket, {}).get(key)
            if obj is None:
                self._error(404, "NoSuchKey" if bucket in state.buckets else "NoSuchBucket", key)
                return
            data = obj["data"]
            headers = {"ETag": obj["etag"], "x-oss-hash-crc64ecma": obj["crc"], "Content-Type": "application/octet-stream",
                       "Last-Modified": formatdate(obj["mtime"], usegmt=True), "Accept-Ranges": "bytes", **obj["meta"]}
            rng = byte_range(self.headers.get("Range"), len(data)) if self.command == "GET" else None
            if rng:
                start, end = rng
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                self._send(206, data[start : end + 1], headers)
                return
            if self.command == "HEAD":
                self.send_response(200)
                self.send_header("x-oss-request-id", "0")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                return
            self._send(200, data, headers)

    return Handler


class OssStandIn(LocalServer):
    """Serve the stand-in on 127.0.0.1; ``endpoint`` is what ``oss2.Bucket`` takes."""

    def __init__(self, access_key_id: str = "aptops-oss", access_key_secret: str | None = None) -> None:
        self.state = OssState(access_key_id, access_key_secret or uuid.uuid4().hex)
        super().__init__(_handler(self.state))
        self.endpoint = self.url
