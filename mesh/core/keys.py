"""What a key may be: UTF-8, 1 to 1024 bytes, '/'-separated, no empty, '.' or '..' segment, no NUL."""

from __future__ import annotations

import functools

from mesh.errors import InvalidKey

MAX_KEY_BYTES = 1024


def validate_key(key: str) -> str:
    """Return ``key`` if it is valid, else raise InvalidKey naming the rule it breaks."""
    if not isinstance(key, str):
        raise InvalidKey("a key is a string")
    return _validate_str(key)


@functools.lru_cache(maxsize=4096)
def _validate_str(key: str) -> str:
    """Remembers the keys it passed: a commit's key is checked by every message that names it."""
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"{key!r} is not valid UTF-8") from exc
    if not raw:
        raise InvalidKey("a key is 1 to 1024 bytes; it is empty")
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidKey(f"a key is 1 to 1024 bytes; it is {len(raw)}")
    if "\x00" in key:
        raise InvalidKey(f"{key!r} contains NUL")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            shown = "an empty" if segment == "" else f"a {segment!r}"
            raise InvalidKey(f"{key!r} has {shown} segment")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: any valid key or the start of one (may end in '/'), or empty."""
    if prefix == "":
        return prefix
    if len(prefix.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES or "\x00" in prefix:
        raise InvalidKey(f"bad prefix {prefix!r}")
    return prefix
