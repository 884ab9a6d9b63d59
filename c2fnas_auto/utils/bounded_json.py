"""Parsing JSON that someone else wrote, within bounds.

`json.loads` recurses once per nesting level, so `[[[[...` a few thousand deep raises
RecursionError (a traceback, not a decode error), and any later recursive walk of a deep
but parseable document can do the same. Files from others (manifests, plans, genotypes,
search states, case properties) are therefore parsed here: size bounded before reading,
nesting depth bounded after parsing, and every failure one `InputError` line naming the
source. No file this project writes comes near either bound.
"""

from __future__ import annotations

import json
from typing import Any

from c2fnas_auto.errors import InputError

MAX_JSON_DEPTH = 64  # plans, states and properties nest about 6 deep
MAX_JSON_BYTES = 256 << 20  # a large task's plans or properties are a few MB


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), walked without recursion."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest


def parse_json(raw: str | bytes, where: Any, what: str = "JSON file", max_depth: int = MAX_JSON_DEPTH,
               max_bytes: int = MAX_JSON_BYTES) -> Any:
    """JSON from `raw`; malformed, oversized or too deeply nested input is one InputError
    line that starts with `where` (a path or a member name)."""
    if len(raw) > max_bytes:
        raise InputError(f"{where}: {what} is {len(raw)} bytes, over the limit of {max_bytes}")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text)
    except RecursionError:
        raise InputError(f"{where}: {what} nests deeper than Python can parse (more than {max_depth} "
                         "levels allowed)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: {what} is not valid JSON ({exc})") from None
    depth = json_depth(value)
    if depth > max_depth:
        raise InputError(f"{where}: {what} nests {depth} levels deep, more than the {max_depth} allowed")
    return value
