"""Latency profiles: fitted per-op coefficients for one (GPU, framework, dtype).

A profile is a small JSON file with provenance (data source, code commit, fit date,
fit error). The committed ones under ``calibration/profiles/`` are the embedded
default, so nothing needs ``../shared`` at run time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from calibration.errors import ComemInputError
from calibration.opmodels import FORMS, OpFit, OpForm

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_FRAMEWORK = "vllm-0.19.0"
SCHEMA_VERSION = 1


def op_form(key: str) -> OpForm:
    """The functional form behind a profile op key (``allreduce_4`` -> allreduce)."""
    if key.startswith("allreduce"):
        return FORMS["allreduce"]
    if key.startswith("gemm"):
        return FORMS["gemm"]
    return FORMS[key]


@dataclass
class Profile:
    """Fitted op models plus the per-iteration framework overhead."""

    gpu: str
    dtype: str
    framework: str
    ops: dict[str, OpFit]
    overhead: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def op(self, key: str) -> OpFit:
        try:
            return self.ops[key]
        except KeyError:
            known = ", ".join(sorted(self.ops))
            raise ComemInputError(
                f"profile {self.gpu}/{self.dtype} has no op '{key}' (has: {known})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "gpu": self.gpu,
            "dtype": self.dtype,
            "framework": self.framework,
            "provenance": self.provenance,
            "overhead": self.overhead,
            "ops": {k: v.to_dict() for k, v in sorted(self.ops.items())},
        }

    def save(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Profile:
        try:
            if data.get("schema") != SCHEMA_VERSION:
                raise ComemInputError(
                    f"{source}: profile schema {data.get('schema')!r}, expected {SCHEMA_VERSION}"
                )
            ops = {k: OpFit.from_dict(k, v) for k, v in data["ops"].items()}
            return cls(
                gpu=data["gpu"],
                dtype=data["dtype"],
                framework=data["framework"],
                ops=ops,
                overhead=dict(data.get("overhead", {})),
                provenance=dict(data.get("provenance", {})),
            )
        except KeyError as exc:
            raise ComemInputError(f"{source}: profile lacks field {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        p = Path(path)
        if not p.is_file():
            raise ComemInputError(f"{p}: profile file does not exist")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise ComemInputError(f"{p}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        return cls.from_dict(data, source=str(p))


def profile_path(gpu: str, dtype: str, framework: str = DEFAULT_FRAMEWORK) -> Path:
    return PROFILE_DIR / f"{gpu}__{framework}__{dtype}.json"


def available_profiles() -> list[tuple[str, str, str]]:
    """(gpu, framework, dtype) of every embedded profile."""
    found = []
    for p in sorted(PROFILE_DIR.glob("*__*__*.json")):
        gpu, framework, dtype = p.stem.split("__")
        found.append((gpu, framework, dtype))
    return found


@lru_cache(maxsize=32)
def default_profile(gpu: str, dtype: str, framework: str = DEFAULT_FRAMEWORK) -> Profile:
    """The embedded profile for ``gpu``/``dtype``; a clear error if there is none."""
    path = profile_path(gpu, dtype, framework)
    if not path.is_file():
        have = ", ".join(f"{g}/{d} ({f})" for g, f, d in available_profiles()) or "none"
        raise ComemInputError(f"no embedded profile for {gpu}/{dtype} ({framework}); have: {have}")
    return Profile.load(path)
