"""The one command-line dialect of ``ardscale``: ``python -m ardscale.<job> FIRST key=value …``
with Hydra's override grammar (``s=10``, ``labels=[1,2]``, ``prompts=["a surfer","a dog"]``),
``--help`` listing every key with its default, and a user's mistake (a bad key or value, a wrong
folder, missing data) printed as one line with exit status 2. ``ARDSCALE_LOG_LEVEL=DEBUG`` shows
the traceback too.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

USER_ERRORS = (ValueError, FileNotFoundError, OmegaConfBaseException, HydraException)
"""What a user's mistake raises before any work starts: each carries a message naming the key,
file or folder (see the ``Raises`` sections of ``config.load``, the tasks' preflight, ``runs``)."""


def parse(schema, overrides: list[str]):
    """``key=value`` strings (Hydra's grammar) over ``schema`` (a dataclass instance or class) →
    an instance of its class.

    Raises:
        ValueError: an argument that is not ``key=value`` (an old ``--flag``, say).
        omegaconf / Hydra errors: an unknown key, a wrong type, an unparsable value (named).
    """
    names = {f.name for f in dataclasses.fields(schema)}
    for o in overrides:
        if "=" not in o or o.startswith("-"):
            key = o.lstrip("-").split("=")[0].replace("-", "_")
            hint = f" ({o.split('=')[0]} is now {key}=…)" if o.startswith("--") and key in names else ""
            raise ValueError(f"{o!r}: arguments are key=value{hint}; see --help")
    tree: dict = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        *parents, key = o.key_or_group.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[key] = o.value()
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(tree)))


def _comments(cls) -> dict[str, str]:
    """``field → its trailing comment`` in the dataclass's source (the keys' documentation)."""
    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    found = (re.match(r"\s+(\w+):[^=#]*=[^#]*#\s*(.*)$", line) for line in lines)
    return {m.group(1): m.group(2) for m in found if m}


def keys_help(schema, prefix: str = "") -> list[str]:
    """One line per key of the dataclass ``schema``: ``key=default  comment`` (nested sections
    as ``section.key``), in declaration order."""
    obj = schema() if isinstance(schema, type) else schema
    notes, lines = {}, []
    for klass in reversed(type(obj).__mro__):
        if dataclasses.is_dataclass(klass):
            notes.update(_comments(klass))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines += keys_help(value, f"{prefix}{f.name}.")
            continue
        shown = OmegaConf.to_yaml({"v": value}).strip().removeprefix("v: ").removeprefix("v:")
        lines.append(f"  {prefix + f.name + '=' + shown:<34} {notes.get(f.name, '')}".rstrip())
    return lines


def usage(doc: str, first: str, schema) -> str:
    """``--help``: the job's docstring, its usage line and its keys."""
    name = sys.argv[0] if sys.argv and sys.argv[0] else "ardscale"
    return (f"{doc.strip()}\n\nusage: {first} [key=value …]\n\nkeys (default  meaning):\n"
            + "\n".join(keys_help(schema)) + f"\n\n(from {os.path.basename(name)})")


def run(job: Callable[[list[str]], object], argv: list[str] | None, doc: str, first: str, schema,
        extra: dict[str, Callable[[list[str]], None]] | None = None) -> object:
    """Run ``job(argv)`` as a command: ``--help`` / ``-h`` prints :func:`usage` and exits 0, no
    argument prints it and exits 2; ``extra`` maps other flags (e.g. ``--cfg``) to handlers.
    A user's mistake (:data:`USER_ERRORS`) ends the process with its message on one line and
    status 2 (the traceback with ``ARDSCALE_LOG_LEVEL=DEBUG``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage(doc, first, schema))
        raise SystemExit(0)
    if not argv:
        print(usage(doc, first, schema), file=sys.stderr)
        raise SystemExit(2)
    try:
        for flag, handler in (extra or {}).items():
            if flag in argv:
                handler([a for a in argv if a != flag])
                raise SystemExit(0)
        return job(argv)
    except USER_ERRORS as e:
        if os.environ.get("ARDSCALE_LOG_LEVEL", "").upper() == "DEBUG":
            traceback.print_exc()
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2) from None
