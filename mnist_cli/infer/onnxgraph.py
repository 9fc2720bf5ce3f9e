"""What an ONNX file's graph runs, read from its protobuf bytes without the `onnx` package.

A digit classifier is a straight pipeline. A graph that can loop (`Loop`, `Scan`), branch
(`If`) or nest subgraphs can run for ever on the first image, so `open_model` refuses it
before onnxruntime runs anything.
"""

from __future__ import annotations

from collections.abc import Iterator

CONTROL_FLOW = frozenset({"Loop", "If", "Scan"})

# Field numbers from onnx.proto.
_MODEL_GRAPH, _MODEL_METADATA, _MODEL_FUNCTIONS = 7, 14, 25
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_GRAPH_NODES = 1
_NODE_OP_TYPE, _NODE_ATTRIBUTES, _NODE_DOMAIN = 4, 5, 7
_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS = 6, 11
_FUNCTION_NODES = 7


class GraphReadError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise GraphReadError("a number runs past the end of the file")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _fields(data: memoryview) -> Iterator[tuple[int, memoryview | int]]:
    """(field number, value) of one message: bytes for length-delimited fields, else ints."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, value
        elif wire == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise GraphReadError("a field runs past the end of the file")
            yield number, data[at : at + size]
            at += size
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise GraphReadError(f"wire type {wire} is not used by ONNX")


def _nodes(graph: memoryview, field: int = _GRAPH_NODES) -> Iterator[tuple[str, str, bool]]:
    """(domain, op_type, holds a subgraph) of each node; a subgraph is not read further (it
    is refused whatever it holds, so a file nested a thousand deep costs no recursion)."""
    for number, node in _fields(graph):
        if number != field or isinstance(node, int):
            continue
        domain, op_type, nested = "", "", False
        for part, value in _fields(node):
            if isinstance(value, int):
                continue
            if part == _NODE_OP_TYPE:
                op_type = bytes(value).decode(errors="replace")
            elif part == _NODE_DOMAIN:
                domain = bytes(value).decode(errors="replace")
            elif part == _NODE_ATTRIBUTES:
                nested = nested or any(
                    kind in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS) for kind, _ in _fields(value)
                )
        yield domain, op_type, nested


def operators(model: bytes) -> list[tuple[str, str, bool]]:
    """Every node of the model's graph and local functions: (domain, op_type, has subgraph)."""
    found = []
    for number, value in _fields(memoryview(model)):
        if isinstance(value, int):
            continue
        if number == _MODEL_GRAPH:
            found.extend(_nodes(value))
        elif number == _MODEL_FUNCTIONS:
            found.extend(_nodes(value, _FUNCTION_NODES))
    return found


def control_flow(model: bytes) -> str | None:
    """What in the graph can loop, branch or nest a graph, in words; None for a pipeline."""
    for domain, op_type, nested in operators(model):
        name = f"{domain}.{op_type}" if domain else op_type
        if op_type in CONTROL_FLOW:
            return f"the control-flow operator {name}"
        if nested:
            return f"a {name} node that holds a subgraph"
    return None


def metadata(model: bytes) -> dict[str, str]:
    """The model's metadata_props (what `mnist export` stamps: source checkpoint, labels...)."""
    found = {}
    for number, entry in _fields(memoryview(model)):
        if number != _MODEL_METADATA or isinstance(entry, int):
            continue
        parts = {
            k: bytes(v).decode(errors="replace")
            for k, v in _fields(entry)
            if not isinstance(v, int)
        }
        found[parts.get(_ENTRY_KEY, "")] = parts.get(_ENTRY_VALUE, "")
    return found
