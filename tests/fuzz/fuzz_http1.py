"""atheris harness for the HTTP/1.1 parser and chunked scanner.

Invariant: for any bytes, split at any point, the parser (as request or
response) and the chunked scanner
  * never crash and give the same verdict whole as split in two;
  * on success report a head that ends in CRLF CRLF within the input, whose
    method and header names are tokens and whose values hold no CR, LF or
    NUL, with content_length set only for Content-Length framing;
  * on error report one of 400/414/431/501 and a message;
  * dechunking consumes no more than it was given and yields no more
    payload than it consumed.

Run: PYTHONPATH=. python tests/fuzz/fuzz_http1.py [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import re
import sys

import atheris

with atheris.instrument_imports():
    from zlbfast import _native

TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")

# Starting points that reach deep into the grammar quickly.
SEEDS = [
    b"GET /a?b=c HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b'POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x="y"\r\nhello\r\n0\r\nT: v\r\n\r\n',
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 204 \r\nConnection: keep-alive\r\n\r\n",
    b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
]


def check_head(data: bytes, res) -> None:
    if res is None:
        return
    if isinstance(res, tuple):
        assert res[0] in (400, 414, 431, 501) and res[1], res
        return
    n = res["head_len"]
    assert n <= len(data) and data[n - 4 : n] == b"\r\n\r\n", res
    if "method" in res:
        assert TOKEN.fullmatch(res["method"]), res
    for name, value in res["headers"]:
        assert TOKEN.fullmatch(name), res
        assert not set(value) & {0, 10, 13}, res
    assert res["body"] == "length" or res["content_length"] == 0, res


@atheris.instrument_func
def TestOneInput(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    mode = fdp.ConsumeIntInRange(0, 2)
    cut = fdp.ConsumeIntInRange(0, 1 << 16)
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    cut %= len(data) + 1
    pieces = [data[:cut], data[cut:]]
    if mode == 0:
        res = _native.h1_parse_request(data)
        assert _native.h1_feed_request(pieces) == res
        check_head(data, res)
    elif mode == 1:
        res = _native.h1_parse_response(data, request_was_head=bool(cut & 1))
        assert _native.h1_feed_response(pieces, request_was_head=bool(cut & 1)) == res
        check_head(data, res)
    else:
        res = _native.h1_dechunk(data)
        assert _native.h1_dechunk_pieces(pieces) == res
        if isinstance(res, tuple):
            assert len(res[0]) <= res[1] <= len(data), res


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
