"""The one reading of the operator's YAML settings files (the policy file, the quota file).

Both are YAML, or JSON (which PyYAML reads as YAML), and both refuse the same way a text
that is not YAML or is empty: one line naming the line of the error, never quoting the
text (a policy file sits beside secrets).
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["yaml_document"]


def yaml_document(text: str) -> Any:
    """The document ``text`` holds (not None).

    Raises:
        ValueError: ``text`` is not YAML or JSON (naming the line), or it is empty.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"not YAML or JSON{where}") from None
    if data is None:
        raise ValueError("it is empty")
    return data
