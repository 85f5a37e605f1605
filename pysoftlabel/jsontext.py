"""JSON text that every reader takes: NaN and infinities, which Python's json writes as the non-standard
tokens NaN and Infinity (refused by jq, JavaScript's JSON.parse and strict parsers), become null."""
import json
import math

__all__ = ["json_text"]


def _standard(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _standard(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_standard(item) for item in value]
    return value


def json_text(value, indent=None, default=None) -> str:
    """``json.dumps(value, indent=indent, default=default)`` with every non-finite float (a figure with no rows
    to measure, such as the ECE of an empty set) written as null; raises ValueError if one is left (in what
    ``default`` returns)."""
    return json.dumps(_standard(value), indent=indent, default=default, allow_nan=False)
