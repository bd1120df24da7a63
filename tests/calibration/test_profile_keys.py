"""A misspelt key in a profile is refused, not dropped: an overhead term it names would
otherwise price as 0 and the result change without a word (a fuzzing pass found it)."""

from __future__ import annotations

import json

import pytest

from calibration.errors import ComemInputError
from calibration.measured import MeasuredProfile
from calibration.profile import Profile, profile_path


def _kernel_profile() -> dict:
    return json.loads(profile_path("h100_sxm", "bf16").read_text())


@pytest.mark.parametrize("section", ["overhead", "overheads.vllm-serving"])
def test_a_misspelt_overhead_term_is_refused_with_the_right_name(section: str) -> None:
    data = _kernel_profile()
    entry = data["overhead"] if section == "overhead" else data["overheads"]["vllm-serving"]
    entry["per_iteration_serial"] = entry.pop("per_iteration_serial_s")
    with pytest.raises(ComemInputError, match="did you mean 'per_iteration_serial_s'"):
        Profile.from_dict(data, "p.json")


def test_unknown_keys_in_an_op_or_its_params_are_refused() -> None:
    data = _kernel_profile()
    op = next(iter(data["ops"]))
    data["ops"][op]["foo"] = 1
    with pytest.raises(ComemInputError, match=f"op '{op}': unknown field 'foo'"):
        Profile.from_dict(data, "p.json")
    data = _kernel_profile()
    data["ops"][op]["params"]["zz9"] = 1.0
    with pytest.raises(ComemInputError, match="params: unknown field 'zz9'"):
        Profile.from_dict(data, "p.json")


def test_a_measured_profile_with_a_misspelt_or_foreign_field_is_refused() -> None:
    good = {
        "schema": "comem-measured-profile/1", "kind": "measured",
        "surrogate": {"c0": 1e-3, "c1": 1e-6, "c2": 0.0, "c3": 1e-5, "c4": 0.0},
        "request_overhead_s": 0.005, "max_num_batched_tokens": 2048,
    }  # fmt: skip
    MeasuredProfile.from_dict(good, "m.json")
    misspelt = dict(good)
    misspelt["request_overhead"] = misspelt.pop("request_overhead_s")
    with pytest.raises(ComemInputError, match="did you mean 'request_overhead_s'"):
        MeasuredProfile.from_dict(misspelt, "m.json")
    extra = {**good, "surrogate": {**good["surrogate"], "c5": 1.0}}
    with pytest.raises(ComemInputError, match="surrogate: unknown field 'c5'"):
        MeasuredProfile.from_dict(extra, "m.json")
    with pytest.raises(ComemInputError, match="kind 'kernel'"):
        MeasuredProfile.from_dict({**good, "kind": "kernel"}, "m.json")


def test_a_fit_may_replace_its_own_kind_of_output_and_nothing_else(tmp_path) -> None:
    """--out over an earlier output of the same fit is allowed (a re-fit); over a user's
    file, or over the other kind of profile, it is refused."""
    from calibration.outputs import refuse_foreign_file
    from calibration.profile import is_profile_json
    from sim.workloads import FITTED_FILE, check_fitted

    kernel = tmp_path / "kernel.json"
    kernel.write_text(profile_path("h100_sxm", "bf16").read_text())
    refuse_foreign_file(kernel, lambda d: is_profile_json(d), "a kernel profile")  # a re-fit
    with pytest.raises(ComemInputError, match="not a measured profile"):
        refuse_foreign_file(kernel, lambda d: is_profile_json(d, True), "a measured profile")

    def fitted(d) -> bool:
        check_fitted(d, "--out")
        return True

    refuse_foreign_file(FITTED_FILE, fitted, "a fitted workload")
    with pytest.raises(ComemInputError, match="not a fitted workload"):
        refuse_foreign_file(kernel, fitted, "a fitted workload")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)  # too deep to parse: not ours, one line
    with pytest.raises(ComemInputError, match="not a fitted workload"):
        refuse_foreign_file(deep, fitted, "a fitted workload")
