"""Differential tests of the C HTTP/1.1 parser against h11.

Generated valid requests and responses must be accepted by both with the same
method, target, headers (names compared case-insensitively) and body bytes.
Generated invalid requests must be rejected; where h11 is deliberately more
lenient than RFC 9112 allows a proxy to be (docs/http1-parser.md lists each
case) the test says so and checks only our verdict. Every input is also fed
whole, byte by byte and at hypothesis-chosen split points, which must agree.
"""

from __future__ import annotations

import re

import h11
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from zlbfast import _native

if not hasattr(_native, "h1_parse_request"):
    pytest.fail('zlbfast._native lacks the HTTP/1.1 surface: _native.pyx must include "_http1.pxi"', pytrace=False)

# derandomize: CI runs see the same examples every time; the C tests and the
# fuzz smoke cover randomness.
H1_SETTINGS = settings(
    max_examples=100, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=:@"
SPECIAL = {b"host", b"content-length", b"transfer-encoding"}

# ---- strategies ------------------------------------------------------------------

tokens = st.text(alphabet=TCHAR, min_size=1, max_size=12).map(str.encode)
methods = st.one_of(
    st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS"]), tokens
).filter(lambda m: m != b"CONNECT")
pct = st.tuples(st.sampled_from("0123456789abcdefABCDEF"), st.sampled_from("0123456789ABCDEF")).map(
    lambda t: "%" + t[0] + t[1]
)
segment = st.lists(st.one_of(st.text(alphabet=PCHAR, max_size=6), pct), max_size=3).map("".join)
path = st.lists(segment, min_size=1, max_size=4).map(lambda segs: "/" + "/".join(segs))
query = st.one_of(st.just(""), st.text(alphabet=PCHAR + "/?", max_size=12).map(lambda q: "?" + q))
hostnames = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,12}[a-z0-9])?(:[0-9]{1,5})?\Z", fullmatch=True)
origin_form = st.tuples(path, query).map(lambda t: (t[0] + t[1]).encode())
absolute_form = st.tuples(st.sampled_from(["http", "https"]), hostnames, path, query).map(
    lambda t: f"{t[0]}://{t[1]}{t[2]}{t[3]}".encode()
)
targets = st.one_of(origin_form, origin_form, absolute_form)

# Field values as both parsers read them: visible ASCII or obs-text, with
# inner (never leading or trailing) spaces and tabs.
value_chars = st.one_of(st.integers(0x21, 0x7E), st.integers(0x80, 0xFF)).map(lambda b: bytes([b]))
value_words = st.lists(value_chars, min_size=1, max_size=6).map(b"".join)
values = st.one_of(
    st.just(b""),
    st.tuples(value_words, st.lists(st.tuples(st.sampled_from([b" ", b"\t", b"  "]), value_words), max_size=3)).map(
        lambda t: t[0] + b"".join(a + b for a, b in t[1])
    ),
)
plain_headers = st.lists(st.tuples(tokens.filter(lambda n: n.lower() not in SPECIAL), values), max_size=6)
ows = st.sampled_from([b"", b" ", b"\t", b" \t "])


@st.composite
def chunked_bodies(draw) -> tuple[bytes, bytes]:
    """(wire bytes, payload): random chunk sizes in either hex case, with
    optional leading zeros, extensions and trailers."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=4))
    wire = b""
    for c in chunks:
        size = format(len(c), draw(st.sampled_from(["x", "X"]))).encode()
        size = b"0" * draw(st.integers(0, 2)) + size
        ext = draw(st.sampled_from([b"", b";a", b";name=value", b';q="x y"']))
        wire += size + ext + b"\r\n" + c + b"\r\n"
    wire += b"0\r\n"
    for name, value in draw(st.lists(st.tuples(tokens, value_words), max_size=2)):
        wire += name + b": " + value + b"\r\n"
    return wire + b"\r\n", b"".join(chunks)


@st.composite
def valid_requests(draw) -> tuple[bytes, dict]:
    """A valid request and what it must parse to."""
    minor = draw(st.sampled_from([0, 1, 1, 1]))
    method = draw(methods)
    target = draw(targets)
    headers = draw(plain_headers)
    if minor == 1 or draw(st.booleans()):
        headers.insert(draw(st.integers(0, len(headers))), (b"Host", draw(hostnames).encode()))
    framing = draw(st.sampled_from(["none", "length", "chunked"] if minor == 1 else ["none", "length"]))
    body = b""
    wire_body = b""
    if framing == "length":
        body = draw(st.binary(max_size=64))
        wire_body = body
        headers.append((draw(st.sampled_from([b"Content-Length", b"content-length"])), str(len(body)).encode()))
    elif framing == "chunked":
        wire_body, body = draw(chunked_bodies())
        headers.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked", b"CHUNKED"]))))
    head = method + b" " + target + b" HTTP/1." + str(minor).encode() + b"\r\n"
    for name, value in headers:
        head += name + b":" + draw(ows) + value + draw(ows) + b"\r\n"
    want = {"method": method, "target": target, "headers": headers, "body": body, "framing": framing}
    return head + b"\r\n" + wire_body, want


# ---- both parsers, same shape ------------------------------------------------------


def c_request(pieces: list[bytes]) -> tuple:
    """("ok", method, target, headers, body, consumed) | ("error", status) | ("incomplete",)."""
    data = b"".join(pieces)
    head = _native.h1_feed_request(pieces)
    if head is None:
        return ("incomplete",)
    if isinstance(head, tuple):
        return ("error", head[0])
    rest = data[head["head_len"] :]
    if head["body"] == "length":
        if len(rest) < head["content_length"]:
            return ("incomplete",)
        body, used = rest[: head["content_length"]], head["content_length"]
    elif head["body"] == "chunked":
        # split the body where the head split it, to exercise the scanner too
        cuts = [max(0, len(b"".join(pieces[: i + 1])) - head["head_len"]) for i in range(len(pieces))]
        body_pieces = [rest[a:b] for a, b in zip([0, *cuts], [*cuts, len(rest)], strict=True)]
        res = _native.h1_dechunk_pieces(body_pieces)
        if res is None:
            return ("incomplete",)
        if isinstance(res, str):
            return ("error", 400)
        body, used = res
    else:
        body, used = b"", 0
    return ("ok", head["method"], head["target"], head["headers"], body, head["head_len"] + used)


def h11_request(data: bytes) -> tuple:
    """The same shape from h11 (headers as it reports them, raw names)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    try:
        req = conn.next_event()
        if req is h11.NEED_DATA:
            return ("incomplete",)
        body = b""
        for _ in range(len(data) + 2):  # one event per Data piece at most per byte
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                return ("incomplete",)
            if isinstance(ev, h11.EndOfMessage):
                break
            body += ev.data
    except h11.RemoteProtocolError as e:
        return ("error", e.error_status_hint)
    return ("ok", req.method, req.target, req.headers.raw_items(), body)


def comparable_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    # h11 lowercases names, drops a repeated identical Content-Length and
    # lowercases Transfer-Encoding; framing headers are compared through the
    # body bytes instead.
    return [(n.lower(), v) for n, v in headers if n.lower() not in (b"content-length", b"transfer-encoding")]


def all_splits_agree(data: bytes, cuts: list[int]) -> tuple:
    """Whole, byte-by-byte and at `cuts` must give one result; returns it."""
    whole = c_request([data])
    assert c_request([data[i : i + 1] for i in range(len(data))]) == whole
    bounds = sorted({0, *[c % (len(data) + 1) for c in cuts], len(data)})
    assert c_request([data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]) == whole
    return whole


# ---- valid messages ------------------------------------------------------------------


@H1_SETTINGS
@given(valid_requests(), st.lists(st.integers(0, 1 << 16), max_size=4))
def test_valid_requests_match_h11(req, cuts):
    data, want = req
    ours = all_splits_agree(data, cuts)
    theirs = h11_request(data)
    assert ours[0] == "ok", ours
    assert theirs[0] == "ok", theirs
    assert ours[1] == theirs[1] == want["method"]
    assert ours[2] == theirs[2] == want["target"]
    assert comparable_headers(ours[3]) == comparable_headers(theirs[3])
    assert [n for n, _ in ours[3]] == [n for n, _ in want["headers"]]
    assert ours[4] == theirs[4] == want["body"]
    assert ours[5] == len(data)


@st.composite
def valid_responses(draw) -> tuple[bytes, bytes, bytes]:
    """(request method, response bytes, expected body) with an explicit
    framing: Content-Length, chunked or close-delimited."""
    method = draw(st.sampled_from([b"GET", b"HEAD"]))
    status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
    reason = draw(st.sampled_from([b" OK", b" ", b"", b" Not Found", b" caf\xc3\xa9 x"]))
    headers = draw(plain_headers)
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    body, wire = b"", b""
    if framing == "length":
        body = draw(st.binary(max_size=40))
        headers.append((b"Content-Length", str(len(body)).encode()))
        wire = body
    elif framing == "chunked":
        wire, body = draw(chunked_bodies())
        headers.append((b"Transfer-Encoding", b"chunked"))
    else:
        body = draw(st.binary(max_size=40))
        wire = body
    head = b"HTTP/1.1 " + str(status).encode() + reason + b"\r\n"
    head += b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    if status in (204, 304) or method == b"HEAD":
        body, wire = b"", b""
    return method, head + b"\r\n" + wire, body


def h11_response(method: bytes, data: bytes) -> tuple:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")  # EOF ends a close-delimited body
    resp = conn.next_event()
    body = b""
    for _ in range(len(data) + 2):
        ev = conn.next_event()
        if isinstance(ev, h11.EndOfMessage):
            break
        body += ev.data
    return resp.status_code, resp.headers.raw_items(), body


@H1_SETTINGS
@given(valid_responses(), st.integers(0, 1 << 16))
def test_valid_responses_match_h11(resp, cut):
    method, data, want_body = resp
    head = _native.h1_parse_response(data, request_was_head=method == b"HEAD")
    cut %= len(data) + 1
    assert _native.h1_feed_response([data[:cut], data[cut:]], request_was_head=method == b"HEAD") == head
    assert isinstance(head, dict), head
    status, h11_headers, h11_body = h11_response(method, data)
    assert head["status"] == status
    assert comparable_headers(head["headers"]) == comparable_headers(h11_headers)
    rest = data[head["head_len"] :]
    if head["body"] == "length":
        body = rest[: head["content_length"]]
    elif head["body"] == "chunked":
        body = _native.h1_dechunk(rest)[0]
    elif head["body"] == "close":
        body = rest
    else:
        body = b""
    assert body == h11_body == want_body


# ---- header name ids ------------------------------------------------------------------


@st.composite
def near_known_names(draw) -> bytes:
    """A name the parser gives an id, in random case, sometimes one tchar
    edit (replace, insert, delete) away from it."""
    name = draw(st.sampled_from(sorted(_native.H1_HEADER_IDS)))
    name = bytes(c ^ 0x20 if chr(c).isalpha() and draw(st.booleans()) else c for c in name)
    edit = draw(st.sampled_from(["none", "replace", "insert", "delete"]))
    i = draw(st.integers(0, len(name) - 1))
    c = draw(st.sampled_from(TCHAR)).encode()
    if edit == "replace":
        name = name[:i] + c + name[i + 1 :]
    elif edit == "insert":
        name = name[:i] + c + name[i:]
    elif edit == "delete" and len(name) > 1:
        name = name[:i] + name[i + 1 :]
    return name


@H1_SETTINGS
@given(st.lists(st.one_of(near_known_names(), tokens), min_size=1, max_size=8))
def test_header_ids_match_names(names):
    # A response, so that any number of Host fields is fine; the framing
    # fields get the only values that keep the head valid.
    lowered = [n.lower() for n in names]
    assume(not (b"transfer-encoding" in lowered and b"content-length" in lowered))
    data = b"HTTP/1.1 200 OK\r\n" + b"".join(
        n + (b": chunked\r\n" if n.lower() == b"transfer-encoding" else b": 0\r\n") for n in names
    )
    head = _native.h1_parse_response(data + b"\r\n")
    assert isinstance(head, dict), head
    assert head["header_ids"] == [_native.H1_HEADER_IDS.get(n, _native.H1_HDR_OTHER) for n in lowered]

# ---- invalid messages -----------------------------------------------------------------


def sub_host(data: bytes, repl: bytes) -> bytes:
    """Replaces the first "CRLF Host:" (any case) with repl."""
    return re.sub(rb"(?i)\r\nhost:", lambda _: repl, data, count=1)


# Mutations of a valid request that RFC 9112 forbids and that h11 rejects as
# well: both parsers must say no.
BOTH_REJECT = {
    "space in name": lambda d: sub_host(d, b"\r\nHo st:"),
    "space before colon": lambda d: sub_host(d, b"\r\nHost :"),
    "NUL in value": lambda d: sub_host(d, b"\r\nX: a\x00b\r\nHost:"),
    "CR in value": lambda d: sub_host(d, b"\r\nX: a\rb\r\nHost:"),
    "VT in value": lambda d: sub_host(d, b"\r\nX: a\x0bb\r\nHost:"),
    "double space in request line": lambda d: d.replace(b" ", b"  ", 1),
    "tab in request line": lambda d: d.replace(b" ", b"\t", 1),
    "space in target": lambda d: d.replace(b" /", b" /a b", 1),
    "control in target": lambda d: d.replace(b" /", b" /\x01", 1),
    "lowercase version": lambda d: d.replace(b" HTTP/1.", b" http/1.", 1),
    "short version": lambda d: d.replace(b" HTTP/1.1\r\n", b" HTTP/1\r\n", 1),
    "bad method": lambda d: b"G(T" + d[d.index(b" ") :],
    "differing CL": lambda d: d.replace(b"\r\n\r\n", b"\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 1),
    "bad CL": lambda d: d.replace(b"\r\n\r\n", b"\r\nContent-Length: 1x\r\n\r\n", 1),
    "gzip TE": lambda d: d.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: gzip\r\n\r\n", 1),
    "two hosts": lambda d: d.replace(b"\r\n\r\n", b"\r\nHost: b\r\n\r\n", 1),
    "missing host": lambda d: b"\r\n".join(line for line in d.split(b"\r\n") if not line.lower().startswith(b"host:")),
    "leading whitespace": lambda d: b" " + d,
    "bad chunk size": lambda d: d.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 1),
    "chunk data without CRLF": lambda d: d.replace(
        b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n", 1
    ),
}

# Mutations RFC 9112 forbids (or lets a server refuse) that h11 accepts; a
# proxy must refuse them because an upstream may read them differently. Each
# is a documented difference (docs/http1-parser.md): only our verdict is
# checked.
WE_REJECT_H11_ACCEPTS = {
    "obs-fold": lambda d: d.replace(b"\r\n\r\n", b"\r\nX: a\r\n b\r\n\r\n", 1),
    "bare LF line end": lambda d: d.replace(b"\r\n", b"\n", 1),
    "bare LF everywhere": lambda d: d.replace(b"\r\n", b"\n"),
    "CL and TE": lambda d: d.replace(
        b"\r\n\r\n", b"\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1
    ),
    "CL list": lambda d: d.replace(b"\r\n\r\n", b"\r\nContent-Length: 0, 0\r\n\r\n", 1),
    "control byte in value": lambda d: d.replace(b"\r\n\r\n", b"\r\nX: a\x01b\r\n\r\n", 1),
    "DEL in value": lambda d: d.replace(b"\r\n\r\n", b"\r\nX: a\x7f\r\n\r\n", 1),
    "HTTP/1.2": lambda d: d.replace(b" HTTP/1.1\r\n", b" HTTP/1.2\r\n", 1),
    "fragment in target": lambda d: d.replace(b" /", b" /#x", 1),
    "backslash in target": lambda d: d.replace(b" /", b" /\\x", 1),
    "space in Host": lambda d: sub_host(d, b"\r\nHost: a "),
    "chunk size trailing space": lambda d: d.replace(
        b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n1 \r\na\r\n0\r\n\r\n", 1
    ),
    "chunk ext with space": lambda d: d.replace(
        b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n1; a\r\na\r\n0\r\n\r\n", 1
    ),
    "huge chunk size": lambda d: d.replace(
        b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 17 + b"\r\na", 1
    ),
}


def as_http11(data: bytes) -> bytes:
    """A bodiless request as HTTP/1.1 with a Host header, for the mutations
    to work on."""
    data = data.replace(b" HTTP/1.0\r\n", b" HTTP/1.1\r\n", 1)
    if b"\r\nhost:" not in data.lower():
        data = data.replace(b"\r\n", b"\r\nHost: a\r\n", 1)
    return data


simple_requests = valid_requests().filter(
    lambda r: r[1]["framing"] == "none" and r[0].startswith(r[1]["method"] + b" /")
)


@H1_SETTINGS
@given(simple_requests, st.sampled_from(sorted(BOTH_REJECT)), st.lists(st.integers(0, 1 << 16), max_size=3))
def test_invalid_requests_rejected_like_h11(req, kind, cuts):
    data = BOTH_REJECT[kind](as_http11(req[0]))
    assert data != as_http11(req[0])
    ours = all_splits_agree(data, cuts)
    assert ours[0] == "error", (kind, data, ours)
    assert h11_request(data)[0] == "error", (kind, data)


@H1_SETTINGS
@given(simple_requests, st.sampled_from(sorted(WE_REJECT_H11_ACCEPTS)), st.lists(st.integers(0, 1 << 16), max_size=3))
def test_h11_leniencies_rejected(req, kind, cuts):
    data = WE_REJECT_H11_ACCEPTS[kind](as_http11(req[0]))
    assert data != as_http11(req[0])
    assert all_splits_agree(data, cuts)[0] == "error", (kind, data)


@pytest.mark.parametrize("kind", sorted(WE_REJECT_H11_ACCEPTS))
def test_leniency_list_is_real(kind):
    """Each documented difference is one today: h11 accepts the mutated
    request (or waits for more of a body it accepted the framing of), we do
    not. If h11 tightens up, move the case to BOTH_REJECT."""
    base = b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n"
    data = WE_REJECT_H11_ACCEPTS[kind](base)
    assert h11_request(data)[0] != "error", (kind, h11_request(data))
    assert c_request([data])[0] == "error"


@H1_SETTINGS
@given(st.binary(max_size=200), st.lists(st.integers(0, 1 << 16), max_size=3))
def test_arbitrary_bytes_split_consistently(data, cuts):
    all_splits_agree(data, cuts)
    assert _native.h1_dechunk_pieces([data[i : i + 1] for i in range(len(data))]) == _native.h1_dechunk(data)
