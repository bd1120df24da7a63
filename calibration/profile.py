"""Latency profiles: fitted per-op coefficients for one (GPU, framework, dtype).

A profile is a small JSON file with provenance (data source, code commit, fit date,
fit error). The committed ones under ``calibration/profiles/`` are the embedded
default, so nothing needs ``../shared`` at run time.
"""

from __future__ import annotations

import json
import math
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from calibration.dtypes import DTYPES
from calibration.errors import ComemInputError
from calibration.inputs import read_json, refuse_unknown_keys
from calibration.opmodels import FORMS, OpFit, OpForm
from calibration.outputs import write_text

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_FRAMEWORK = "vllm-0.19.0"
SCHEMA_VERSION = 1
#: A per-iteration or per-sequence overhead above this many seconds is no server
MAX_OVERHEAD_S = 60.0
#: |log correction| of a lattice knot: the committed fits stay within 1.04 (x2.8)
MAX_LATTICE_LOG = 5.0
#: parameters that may be 0 (a launch floor, a width below which nothing narrows)
_MAY_BE_ZERO = frozenset({"t0", "n_half", "t_seq", "tau"})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_op_numbers(key: str, fit: OpFit, source: str) -> None:
    """Every parameter finite and >= 0 (> 0 where it divides), every hardware constant
    finite and > 0, every lattice knot finite and within :data:`MAX_LATTICE_LOG`."""
    for name, value in fit.params.items():
        low_ok = _number(value) and (value >= 0 if name in _MAY_BE_ZERO else value > 0)
        if not low_ok or not math.isfinite(value):
            bound = ">= 0" if name in _MAY_BE_ZERO else "> 0"
            raise ComemInputError(
                f"{source}: op '{key}' parameter {name} must be a finite number {bound},"
                f" got {value!r}"
            )
    form = op_form(key)
    needed = ("peak_flops", "hbm_Bps", "sm_count") if form.name == "context_attention" else ()
    missing = [n for n in ("peak_flops", "hbm_Bps", *needed) if n not in fit.hw]
    if missing:
        raise ComemInputError(
            f"{source}: op '{key}' lacks hardware constant(s) {', '.join(dict.fromkeys(missing))}"
        )
    for name, value in fit.hw.items():
        if not _number(value) or not math.isfinite(value) or value <= 0:
            raise ComemInputError(
                f"{source}: op '{key}' hardware constant {name} must be a finite number > 0,"
                f" got {value!r}"
            )
    if fit.lattice is not None:
        import numpy as np

        n, expected = len(fit.lattice.axes), len(form.axes)
        # an older MoE lattice, fitted before the form gained its expert-parallel
        # coordinate, reads the leading ones (opmodels.predict); other ops need them all
        if n != expected and not (form.name == "moe" and 1 <= n < expected):
            raise ComemInputError(
                f"{source}: op '{key}' lattice has {len(fit.lattice.axes)} axes, its model"
                f" {len(form.axes)}"
            )
        vals = np.asarray(fit.lattice.values, dtype=float)
        if not np.all(np.isfinite(vals)) or np.any(np.abs(vals) > MAX_LATTICE_LOG):
            raise ComemInputError(
                f"{source}: op '{key}' lattice values must be finite and within"
                f" +-{MAX_LATTICE_LOG:g} (a correction of at most x{math.exp(MAX_LATTICE_LOG):.0f})"
            )
        for axis in fit.lattice.axes:
            a = np.asarray(axis, dtype=float)
            if a.size < 2 or not np.all(np.isfinite(a)) or np.any(np.diff(a) <= 0):
                raise ComemInputError(
                    f"{source}: op '{key}' lattice axes must hold >= 2 finite, increasing knots"
                )


#: what a fit records beside an overhead's terms (provenance and errors): any other key
#: in an overhead entry is a misspelt term, which would silently price as 0
OVERHEAD_RECORD_FIELDS = frozenset(
    {
        "assumptions", "async_scheduling", "command", "copied_from", "cv_leave_one_gpu_out",
        "cv_leave_one_model_out", "date", "e2e_mape", "e2e_rows", "e2e_worst", "error_bands",
        "excluded_rows", "fitted_on", "fixed_point_iterations", "form", "framework", "note",
        "rows", "source", "tpot_mape", "ttft_mape",
    }
)  # fmt: skip


def check_overhead(overhead: Any, source: str, name: str = "overhead") -> dict[str, Any]:
    """A framework overhead: an object whose terms are finite seconds (per iteration, per
    sequence, per KV token, per request)."""
    if overhead is None:
        return {}
    if not isinstance(overhead, dict):
        raise ComemInputError(
            f"{source}: 'overhead' must be an object, got {type(overhead).__name__}"
        )
    refuse_unknown_keys(overhead, {*OVERHEAD_TERMS, *OVERHEAD_RECORD_FIELDS}, f"{source}: {name}")
    for name in OVERHEAD_TERMS:
        if name not in overhead:
            continue
        value = overhead[name]
        if not _number(value) or not 0.0 <= value <= MAX_OVERHEAD_S:
            raise ComemInputError(
                f"{source}: overhead {name} must be a number of seconds in"
                f" [0, {MAX_OVERHEAD_S:g}], got {value!r}"
            )
    return dict(overhead)


#: Suffix of the attention ops fitted on an fp8 KV cache (``--kv-cache-dtype fp8``).
FP8_KV_SUFFIX = "_fp8kv"


def op_form(key: str) -> OpForm:
    """The functional form behind a profile op key (``allreduce_4`` -> allreduce,
    ``gemm_fp8_tensor`` -> gemm, ``generation_attention_fp8kv`` -> generation_attention)."""
    key = key.removesuffix(FP8_KV_SUFFIX)
    if key.startswith("allreduce"):
        return FORMS["allreduce"]
    if key.startswith("gemm"):
        return FORMS["gemm"]
    return FORMS[FAMILY_FORMS.get(key, key)]


#: The attention families' ops (fitted on their own tables, calibration.family_fit) and the
#: form each is fitted with.
FAMILY_FORMS = {
    "mla_generation": "generation_attention",
    "dsa_generation": "generation_attention",
    "gdn_generation": "generation_attention",
    "gdn_context": "generation_attention",
    "mla_context": "context_attention",
    "dsa_context": "context_attention",
}


#: The fitted terms of a framework overhead (see :class:`FrameworkOverhead`).
OVERHEAD_TERMS = (
    "per_iteration_s",
    "per_iteration_tp_s",
    "per_collective_s",
    "per_sequence_s",
    "per_kv_token_s",
    "per_iteration_serial_s",
    "per_sequence_serial_s",
    "request_overhead_s",
)


#: the top-level fields of a profile file (:meth:`Profile.to_dict`)
PROFILE_FIELDS = (
    "schema",
    "gpu",
    "dtype",
    "framework",
    "provenance",
    "overhead",
    "overheads",
    "ops",
)


@dataclass(frozen=True)
class FrameworkOverhead:
    """What a serving framework adds to the kernels, which no kernel table can know.

    The engine's CPU work per iteration, which vLLM V1 does between two forward passes:
    ``per_iteration_s`` (scheduling, input preparation, launching the step, processing
    its output), ``per_iteration_tp_s`` more when the model spans several GPUs (the
    driver hands every iteration's inputs to its workers), ``per_collective_s`` per
    tensor-parallel collective an iteration launches on several GPUs (two all-reduces a
    layer: what a framework adds to each collective scales with the model's depth, so a
    fit on 32-layer models carries over to 80-layer ones), ``per_sequence_s`` per
    scheduled sequence (its block table and input rows, its sampled token's update),
    ``per_kv_token_s`` per token of KV the scheduled sequences hold (block tables rebuilt
    every step, as the 2024 vLLM did). With asynchronous scheduling (vLLM >= 0.14 by
    default: ``VLLM_FACTS.md``, More facts A) this CPU work for step n+1 overlaps the GPU
    work of step n, so an iteration costs ``max(GPU, CPU)``; without it, ``GPU + CPU``.
    ``per_iteration_serial_s`` is what never overlaps (the hand-off between steps), added
    either way, and ``per_sequence_serial_s`` its part per scheduled sequence. Per
    request, before it is scheduled: ``request_overhead_s`` (HTTP,
    tokenization: in TTFT, not in TPOT). Fitted on end-to-end measurements (``comem
    calibrate fit`` with ``--e2e``, ``comem calibrate fit-serving``).
    """

    per_iteration_s: float = 0.0
    per_iteration_tp_s: float = 0.0
    per_collective_s: float = 0.0
    per_sequence_s: float = 0.0
    per_kv_token_s: float = 0.0
    per_iteration_serial_s: float = 0.0
    per_sequence_serial_s: float = 0.0
    request_overhead_s: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameworkOverhead:
        return cls(**{k: float(data.get(k, 0.0)) for k in OVERHEAD_TERMS})

    def terms(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in OVERHEAD_TERMS}

    def describe(self) -> str:
        """One line of the nonzero terms in microseconds (what fit commands print)."""
        parts = [f"{k} {v * 1e6:.1f} us" for k, v in self.terms().items() if v]
        return ", ".join(parts) or "all terms 0"

    def iteration_s(self, tp: int, collectives: int = 0) -> float:
        """The per-iteration constant on ``tp`` GPUs of a model whose iteration launches
        ``collectives`` tensor-parallel collectives (0 on one GPU)."""
        multi = (self.per_iteration_tp_s + self.per_collective_s * collectives) if tp > 1 else 0.0
        return self.per_iteration_s + multi


def _non_negative(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf


@dataclass
class Profile:
    """Fitted op models plus the per-iteration framework overhead.

    ``overhead`` is the framework overhead the latency model uses by default;
    ``overheads`` keeps every fitted framework version by name (with its provenance),
    so a static batch of the 2024 vLLM and a vLLM 0.12 server are each priced with
    their own (``LatencyModel(..., framework=NAME)``).
    """

    gpu: str
    dtype: str
    framework: str
    ops: dict[str, OpFit]
    overhead: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: the file it was read from ("" when built in memory), for messages
    source: str = field(default="", compare=False)
    overheads: dict[str, dict[str, Any]] = field(default_factory=dict)

    def framework_overhead(self, framework: str | None = None) -> FrameworkOverhead:
        """The overhead of ``framework`` (a key of ``overheads``; None: the default)."""
        if framework is None:
            return FrameworkOverhead.from_dict(self.overhead)
        if framework not in self.overheads:
            have = ", ".join(sorted(self.overheads)) or "none"
            raise ComemInputError(
                f"profile {self.gpu}/{self.dtype} has no overhead fitted for framework"
                f" '{framework}' (has: {have})"
            )
        return FrameworkOverhead.from_dict(self.overheads[framework])

    def framework_bands(self, framework: str | None = None) -> dict[str, Any]:
        """The error bands of ``framework``'s fit (:mod:`calibration.uncertainty`; {} when
        it has none): metric -> :class:`calibration.uncertainty.ErrorBand`."""
        from calibration.uncertainty import read_bands

        entry = self.overhead if framework is None else self.overheads.get(framework, {})
        where = f"profile {self.source or self.gpu + '/' + self.dtype}"
        return read_bands(entry, where)

    def framework_async(self, framework: str | None = None) -> bool:
        """Whether the server ``framework`` was fitted on scheduled asynchronously (its
        entry's ``async_scheduling``; absent: True, vLLM's default since v0.14)."""
        entry = self.overhead if framework is None else self.overheads.get(framework, {})
        value = entry.get("async_scheduling", True)
        if not isinstance(value, bool):
            raise ComemInputError(
                f"profile {self.source or self.gpu + '/' + self.dtype}: overhead"
                f" async_scheduling must be true or false, got {value!r}"[:300]
            )
        return value

    def allreduce_ranks(self) -> list[int]:
        """The GPU counts this profile's all-reduce fits were measured on, ascending."""
        return sorted(int(k.split("_")[1]) for k in self.ops if k.startswith("allreduce_"))

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
            "overheads": self.overheads,
            "ops": {k: v.to_dict() for k, v in sorted(self.ops.items())},
        }

    def save(self, path: str | Path) -> Path:
        data = self.to_dict()
        # what comem writes, comem must read: checked by the reader before it is written
        Profile.from_dict(json.loads(json.dumps(data)), f"{path} (not written)")
        return write_profile_json(path, data)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Profile:
        """Validate and build; every defect is one :class:`ComemInputError` naming it."""
        if not isinstance(data, dict):
            raise ComemInputError(
                f"{source}: a profile is a JSON object, got {type(data).__name__}"
            )
        if data.get("schema") != SCHEMA_VERSION:
            raise ComemInputError(
                f"{source}: profile schema {data.get('schema')!r}, expected {SCHEMA_VERSION}"
            )
        for name in ("gpu", "dtype", "framework", "ops"):
            if name not in data:
                raise ComemInputError(f"{source}: profile lacks field '{name}'")
        refuse_unknown_keys(data, PROFILE_FIELDS, f"{source}: profile")
        for name in ("gpu", "framework"):
            if not isinstance(data[name], str) or not data[name].strip():
                raise ComemInputError(
                    f"{source}: profile field '{name}' must be a non-empty string,"
                    f" got {data[name]!r}"
                )
        if data["dtype"] not in DTYPES:
            raise ComemInputError(
                f"{source}: profile dtype {data['dtype']!r} is not one comem-sim prices"
                f" (known: {', '.join(DTYPES)})"
            )
        if not isinstance(data.get("provenance") or {}, dict):
            raise ComemInputError(f"{source}: 'provenance' must be an object")
        overhead = check_overhead(data.get("overhead"), source)
        if not isinstance(data["ops"], dict) or not data["ops"]:
            raise ComemInputError(f"{source}: 'ops' must be a non-empty object")
        ops = _check_ops(data["ops"], source)
        overheads = data.get("overheads") or {}
        if not isinstance(overheads, dict) or not all(
            isinstance(v, dict) for v in overheads.values()
        ):
            raise ComemInputError(f"{source}: 'overheads' must map framework names to objects")
        for name, terms in [("overhead", data.get("overhead") or {}), *overheads.items()]:
            bad = [k for k in OVERHEAD_TERMS if k in terms and not _non_negative(terms[k])]
            if bad:
                raise ComemInputError(
                    f"{source}: overhead '{name}': {', '.join(bad)} must be numbers >= 0"
                )
        return cls(
            gpu=str(data["gpu"]),
            dtype=str(data["dtype"]),
            framework=str(data["framework"]),
            ops=ops,
            overhead=overhead,
            overheads={
                str(k): check_overhead(v, source, f"overheads.{k}") for k, v in overheads.items()
            },
            provenance=dict(data.get("provenance") or {}),
            source="" if source == "<dict>" else source,
        )

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        return cls.from_dict(read_profile_json(path), source=str(path))


def read_profile_json(path: str | Path) -> Any:
    """A profile file's JSON (any kind of profile); one clear line if it cannot be."""
    return read_json(path, "profile")


def is_profile_json(data: Any, measured: bool = False) -> bool:
    """Whether parsed JSON is a profile comem wrote of the one kind (kernel-fitted, or
    with ``measured`` a live server's): what an ``--out`` of that fit may overwrite. A
    measured profile is not replaced by a kernel fit, nor the other way round."""
    from calibration.measured import MEASURED_SCHEMA

    schema = MEASURED_SCHEMA if measured else SCHEMA_VERSION
    return isinstance(data, dict) and data.get("schema") == schema


def _check_ops(entries: dict[str, Any], source: str) -> dict[str, OpFit]:
    """A profile's ``ops``, each checked: a known op, its keys and parameters (a
    misspelt one refused), finite numbers."""
    ops = {}
    for key, entry in entries.items():
        try:
            form = op_form(key)
        except KeyError:
            raise ComemInputError(f"{source}: unknown op '{key}'") from None
        if not isinstance(entry, dict):
            raise ComemInputError(f"{source}: op '{key}' must be an object")
        refuse_unknown_keys(entry, ("params", "hw", "lattice", "fit"), f"{source}: op '{key}'")
        params = entry.get("params")
        if isinstance(params, dict):
            refuse_unknown_keys(
                params,
                (*form.param_names, *form.optional_params),
                f"{source}: op '{key}' params",
            )
        try:
            fit = OpFit.from_dict(key, entry)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ComemInputError(f"{source}: op '{key}' is malformed ({exc!r})") from None
        missing = [
            p for p in form.param_names if p not in fit.params and p not in form.optional_params
        ]
        if missing:
            raise ComemInputError(
                f"{source}: op '{key}' lacks parameter(s) {', '.join(missing)}"
                " (made by an older comem-sim? refit with 'comem calibrate fit')"
            )
        check_op_numbers(key, fit, source)
        ops[key] = fit
    return ops


def write_profile_json(path: str | Path, data: Any) -> Path:
    import json

    if Path(path).is_dir():
        raise ComemInputError(f"{path}: is a directory, expected a profile file name")
    return write_text(path, json.dumps(data, indent=1) + "\n", "profile")


def code_commit() -> str:
    """The git commit of the fitting code, for a profile's provenance ("-dirty" when
    calibration code, not just profiles, has uncommitted changes; "unknown" outside git)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=here,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "calibration"],
            capture_output=True,
            text=True,
            check=True,
            cwd=here,
            timeout=10,
        ).stdout
        # profiles themselves are outputs: only code changes make the fit "dirty"
        code_dirty = [ln for ln in dirty.splitlines() if "profiles/" not in ln]
        return commit + ("-dirty" if code_dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
