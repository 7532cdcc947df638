"""Envoy's request/response header mutations (request_headers_to_add/remove, response_headers_to_add/remove) at
route configuration, virtual host and route level -> one route's zlbfast.model.HeaderOps.

zlbfast applies one set of operations per route; Envoy evaluates three levels in turn (from the route up, or the
other way round with most_specific_header_mutations_wins), each level removing, then overwriting, then appending.
``fold_headers`` runs that evaluation per header name and emits the operations that leave every header as Envoy
leaves it. What zlbfast cannot do (conditional appends, %COMMAND% substitutions) raises ResourceError naming the
field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from google.protobuf.message import Message

from zlbfast.xds.resources import Ctx, join

Pairs = tuple[tuple[str, str], ...]  # (name, value), in order


@dataclass(frozen=True)
class HeaderSide:
    """One level's mutations of the request or the response headers (names lowercase), grouped as Envoy applies
    them: removals first, then overwrites, then appends."""

    remove: tuple[str, ...] = ()
    set: Pairs = ()
    add: Pairs = ()
    # Field path of the first mutation, for messages.
    path: str = ""


@dataclass(frozen=True)
class HeaderLevel:
    """The mutations of one level (route configuration, virtual host or route)."""

    request: HeaderSide
    response: HeaderSide


def header_level(ctx: Ctx, msg: Message, path: str) -> HeaderLevel:
    return HeaderLevel(_side(ctx, msg, path, "request"), _side(ctx, msg, path, "response"))


def _side(ctx: Ctx, msg: Message, path: str, side: str) -> HeaderSide:
    adds_field, removes_field = f"{side}_headers_to_add", f"{side}_headers_to_remove"
    removes = getattr(msg, removes_field)
    for k, name in enumerate(removes):
        _check_modifiable(ctx, name, join(path, f"{removes_field}[{k}]"))
    sets: list[tuple[str, str]] = []
    adds: list[tuple[str, str]] = []
    option: base_pb2.HeaderValueOption
    for k, option in enumerate(getattr(msg, adds_field)):
        opath = join(path, f"{adds_field}[{k}]")
        ctx.only(option, opath, ("header", "append", "append_action", "keep_empty_value"))
        ctx.only(option.header, f"{opath}.header", ("key", "value"))
        _check_modifiable(ctx, option.header.key, f"{opath}.header.key")
        overwrite = _overwrites(ctx, option, opath)
        value = _literal(ctx, option.header.value, f"{opath}.header.value")
        if not value and not option.keep_empty_value:
            continue  # Envoy adds nothing for an empty value unless keep_empty_value
        (sets if overwrite else adds).append((option.header.key.lower(), value))
    blame = join(path, removes_field) if removes else join(path, adds_field) if sets or adds else ""
    return HeaderSide(tuple(n.lower() for n in removes), tuple(sets), tuple(adds), blame)


def _overwrites(ctx: Ctx, option: base_pb2.HeaderValueOption, path: str) -> bool:
    """Whether the option replaces the header (True) or adds a line to it (False)."""
    action = base_pb2.HeaderValueOption
    if option.HasField("append"):
        if option.append_action != action.APPEND_IF_EXISTS_OR_ADD:
            raise ctx.fail(f"{path}.append", "append and append_action cannot both be set")
        return not option.append.value
    if option.append_action in (action.ADD_IF_ABSENT, action.OVERWRITE_IF_EXISTS):
        name = action.HeaderAppendAction.Name(option.append_action)
        raise ctx.fail(f"{path}.append_action", f"{name} depends on the headers the message already has, which "
                       "zlbfast's header operations do not test; use APPEND_IF_EXISTS_OR_ADD or "
                       "OVERWRITE_IF_EXISTS_OR_ADD")
    return bool(option.append_action == action.OVERWRITE_IF_EXISTS_OR_ADD)


def _check_modifiable(ctx: Ctx, name: str, path: str) -> None:
    # Envoy refuses these too; the model refuses the other headers the proxy manages itself.
    if name.startswith(":") or name.lower() == "host":
        raise ctx.fail(path, f"{name!r}: pseudo-headers and host cannot be modified (use host_rewrite_literal)")


def _literal(ctx: Ctx, value: str, path: str) -> str:
    """A header value without Envoy's %COMMAND% substitutions: '%%' is a literal '%', any other '%' is refused."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("%%", i):
            out.append("%")
            i += 2
        elif value[i] == "%":
            raise ctx.fail(path, f"Envoy substitutes %COMMAND% operators in header values; zlbfast adds literal "
                           f"values only (write %% for a %), got {value!r}")
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def fold_headers(levels: Sequence[HeaderSide]) -> tuple[Pairs, Pairs, tuple[str, ...]]:
    """The (add, set, remove) operations of one route and side that leave every header as Envoy's evaluation of
    `levels`, in order, does. zlbfast drops the message's own lines of the headers it sets or removes and then
    appends its adds (in order) and sets, so per name: untouched original + appended values -> adds; a single
    value replacing the original -> set; nothing left -> remove; several values replacing it -> remove + adds."""
    state: dict[str, tuple[bool, list[str]]] = {}  # name -> (the message's own lines are kept, values appended)
    for side in levels:
        for name in side.remove:
            state[name] = (False, [])
        for name, value in side.set:
            state[name] = (False, [value])  # a later overwrite of the same level wins
        for name, value in side.add:
            kept, values = state.get(name, (True, []))
            state[name] = (kept, [*values, value])
    add: list[tuple[str, str]] = []
    set_: list[tuple[str, str]] = []
    remove: list[str] = []
    for name, (kept, values) in state.items():
        if not kept and len(values) == 1:
            set_.append((name, values[0]))
            continue
        if not kept:
            remove.append(name)
        add.extend((name, v) for v in values)
    return tuple(add), tuple(set_), tuple(remove)
