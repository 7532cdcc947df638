"""Envoy's route matching (RouteMatch: path, headers, query parameters) -> the router's matches
(zlbfast.model.Route path_kind/path, ValueMatch), with Envoy's semantics where the forms differ: suffix, contains
and ignore_case string matchers, and case-insensitive paths, become POSIX regexes; an inverted value match also
requires the header. RE2 regexes are admitted as far as POSIX extended regexes read them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from zlbfast import model
from zlbfast.config import ConfigError, check_regex
from zlbfast.xds.resources import Ctx

# The specials of POSIX extended regexes, escaped when a literal becomes a regex.
_ERE_SPECIAL = frozenset(".[]()*+?{}|^$\\")


def _ere(text: str, *, fold: bool) -> str:
    """A POSIX extended regex matching `text` literally; fold: ASCII letters in either case (Envoy's ignore_case
    and case_sensitive: false compare ASCII only)."""
    out = []
    for ch in text:
        if ch in _ERE_SPECIAL:
            out.append("\\" + ch)
        elif fold and ch.isascii() and ch.isalpha():
            out.append(f"[{ch.lower()}{ch.upper()}]")
        else:
            out.append(ch)
    return "".join(out)


def _literal_match(kind: str, value: str, *, fold: bool) -> tuple[str, str]:
    """A value match (model kind, value) for one of Envoy's literal string matchers."""
    folds = fold and any(ch.isascii() and ch.isalpha() for ch in value)
    if kind == "exact" and not folds:
        return "exact", value
    if kind == "prefix" and not folds:
        return "prefix", value
    lead = ".*" if kind in ("suffix", "contains") else ""
    tail = ".*" if kind in ("prefix", "contains") else ""
    return "regex", f"{lead}{_ere(value, fold=fold)}{tail}"


def _regex(ctx: Ctx, rm: regex_pb2.RegexMatcher, path: str) -> str:
    """Envoy's RE2 regex (matched against the whole value, as zlbfast's are): the part of RE2's syntax that POSIX
    extended regexes read the same way; anything else (\\d, (?:...), lazy quantifiers, ...) is refused."""
    ctx.only(rm, path, ("regex", "google_re2"))
    if rm.HasField("google_re2"):
        ctx.only(rm.google_re2, f"{path}.google_re2", ())
    try:
        check_regex(rm.regex, f"{path}.regex", "")
    except ConfigError as exc:
        raise ctx.fail(exc.path, exc.problem) from exc
    return str(rm.regex)


def _string_match(ctx: Ctx, sm: string_pb2.StringMatcher, path: str) -> tuple[str, str]:
    ctx.only(sm, path, ("exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"))
    kind = sm.WhichOneof("match_pattern")
    if kind is None:
        raise ctx.fail(path, "needs exact, prefix, suffix, contains or safe_regex")
    if kind == "safe_regex":
        return "regex", _regex(ctx, sm.safe_regex, f"{path}.safe_regex")  # ignore_case does not apply (Envoy)
    return _literal_match(kind, getattr(sm, kind), fold=sm.ignore_case)


_HEADER_LITERALS = {"exact_match": "exact", "prefix_match": "prefix", "suffix_match": "suffix",
                    "contains_match": "contains"}


def header_match(ctx: Ctx, hm: rc.HeaderMatcher, path: str) -> list[model.ValueMatch]:
    ctx.only(hm, path, ("name", "exact_match", "safe_regex_match", "present_match", "prefix_match", "suffix_match",
                        "contains_match", "string_match", "invert_match"))
    name = hm.name.lower()
    if name.startswith(":") or name == "host":
        # Envoy matches pseudo-headers (HTTP/1's Host becomes :authority, so "host" never matches there).
        raise ctx.fail(f"{path}.name", f"{hm.name!r}: pseudo-headers and host are not matched by zlbfast")
    spec = hm.WhichOneof("header_match_specifier")
    if spec is None or spec == "present_match":
        present = hm.present_match if spec else True  # a bare name matches any value
        if spec is None and hm.invert_match:
            raise ctx.fail(f"{path}.invert_match", "without a matcher Envoy matches no request at all; "
                           "use present_match: false for an absent header")
        # present_match: false (or true and inverted) matches an absent header.
        return [model.ValueMatch(name, "present", invert=present == hm.invert_match)]
    if spec == "string_match":
        kind, value = _string_match(ctx, hm.string_match, f"{path}.string_match")
    elif spec == "safe_regex_match":
        kind, value = "regex", _regex(ctx, hm.safe_regex_match, f"{path}.safe_regex_match")
    else:
        kind, value = _literal_match(_HEADER_LITERALS[spec], getattr(hm, spec), fold=False)
    match = model.ValueMatch(name, kind, value, invert=hm.invert_match)
    # Envoy's inverted value match still needs the header: a missing one matches nothing but present_match.
    return [model.ValueMatch(name, "present"), match] if hm.invert_match else [match]


def query_match(ctx: Ctx, qm: rc.QueryParameterMatcher, path: str) -> model.ValueMatch:
    ctx.only(qm, path, ("name", "string_match", "present_match"))
    if qm.HasField("string_match"):
        kind, value = _string_match(ctx, qm.string_match, f"{path}.string_match")
        return model.ValueMatch(qm.name, kind, value)
    # present_match: false matches an absent parameter (Envoy's behaviour since
    # enable_new_query_param_present_match_behavior); true, or nothing: present, with any value.
    absent = qm.HasField("present_match") and not qm.present_match
    return model.ValueMatch(qm.name, "present", invert=absent)


@dataclass(frozen=True)
class PathMatch:
    kind: str  # model path_kind
    path: str
    prefix: str | None  # Envoy's prefix when it stays a prefix match (prefix_rewrite needs one)


def path_match(ctx: Ctx, m: rc.RouteMatch, path: str) -> PathMatch:
    kind = m.WhichOneof("path_specifier")
    sensitive = m.case_sensitive.value if m.HasField("case_sensitive") else True
    if kind == "safe_regex":
        return PathMatch("regex", _regex(ctx, m.safe_regex, f"{path}.safe_regex"), None)  # case_sensitive n/a
    if kind == "prefix":
        # Envoy's prefix matches the path with its query, zlbfast's the path alone: the same requests, as the model
        # refuses a '?' in a prefix. The empty prefix (every request) is "/" for origin-form targets.
        prefix = m.prefix or "/"
        literal_kind, value = _literal_match("prefix", prefix, fold=not sensitive)
        return PathMatch(literal_kind, value, m.prefix if literal_kind == "prefix" else None)
    if kind == "path":
        literal_kind, value = _literal_match("exact", m.path, fold=not sensitive)
        return PathMatch(literal_kind, value, None)
    raise ctx.fail(path, "needs prefix, path or safe_regex")
