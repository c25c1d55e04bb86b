"""Access to the data flexlog ships: the knowledge corpus and prompt templates.

In the source tree they live in ``knowledge/`` and ``prompts/``; installed, they are the
package-data packages ``flexlog.knowledge`` and ``flexlog.prompts`` (see pyproject.toml).
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from importlib.resources.abc import Traversable


def knowledge_file(name: str) -> Traversable:
    """A file of the shipped knowledge corpus."""
    return resources.files("flexlog.knowledge").joinpath(name)


def read_knowledge_jsonl(name: str) -> list[dict]:
    """The records of one JSONL file of the knowledge corpus."""
    text = knowledge_file(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@lru_cache(maxsize=1)
def syscalls_i386() -> dict[int, str]:
    """Map i386 system-call number to name (generated from the kernel headers)."""
    return {rec["number"]: rec["key"] for rec in read_knowledge_jsonl("syscalls_i386.jsonl")}
