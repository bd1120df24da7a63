"""What a command says beside a result it still gives: refusals and notes a fuzzing pass
found missing (one line each)."""

from __future__ import annotations

from cli_helpers import assert_user_error, run_comem


def test_calibrate_cv_names_an_unknown_gpu() -> None:
    assert_user_error(run_comem("calibrate", "cv", "--gpu", "nosuch"), "unknown gpu", "nosuch")


def test_engine_sim_says_when_the_engine_refused_requests() -> None:
    proc = run_comem("engine-sim", "--set", "engine.max_model_len=10")
    assert proc.returncode == 0, proc.stderr
    assert "warning: the engine refused 64 of 64 requests" in proc.stderr
    assert "exceeds max_model_len" in proc.stderr


def test_predict_static_past_the_trained_context_is_said() -> None:
    # Qwen3-8B's config.json: max_position_embeddings 40960
    proc = run_comem(
        "predict-static", "--model", "qwen3-8b", "--batch", "1", "--input", "50000",
        "--output", "32",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "past qwen3-8b's max_position_embeddings 40,960" in proc.stderr
    quiet = run_comem(
        "predict-static", "--model", "qwen3-8b", "--batch", "1", "--input", "4000",
        "--output", "32",
    )  # fmt: skip
    assert "max_position_embeddings" not in quiet.stderr


def test_fit_serving_refuses_a_fit_past_its_budget_before_simulating(tmp_path) -> None:
    """9,000 rows took ~45 min with no output; now a one-line refusal up front."""
    head = "model,gpu,vllm_version,dtype,tp,moe_tp,moe_ep,concurrency,isl,osl,ttft_ms,tpot_ms"
    row = "Qwen/Qwen3-32B,h100_sxm,0.12.0,bf16,2,1,1,64,1024,128,380.0,45.0"
    csv = tmp_path / "rows.csv"
    csv.write_text(head + "\n" + "\n".join([row] * 4000) + "\n")
    proc = run_comem("calibrate", "fit-serving", "--csv", str(csv), "--no-cv")
    assert_user_error(proc, "simulated serving requests", "--allow-large")


def test_a_profile_with_an_unknown_field_is_one_line(tmp_path) -> None:
    import json

    from calibration.profile import profile_path

    data = json.loads(profile_path("h100_sxm", "bf16").read_text())
    data["opz"] = {}  # a misspelt "ops" would have been dropped without a word
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps(data))
    proc = run_comem("predict-static", "--model", "llama-3-8b", "--batch", "1", "--input",
                     "100", "--output", "10", "--profile", str(bad))  # fmt: skip
    assert_user_error(proc, "profile: unknown field 'opz'", "did you mean 'ops'")


def test_bench_serve_refuses_what_vllm_would_not_parse() -> None:
    proc = run_comem("bench-serve", "--model", "llama-3-8b", "--temperature", "abc")
    assert proc.returncode == 2 and "invalid float value: 'abc'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bench_serve_says_when_outputs_were_cut_at_max_model_len() -> None:
    """Outputs longer than max_model_len leaves are stopped there (vLLM's engine does): the
    run says how many, instead of counting them as whole completions without a word."""
    proc = run_comem("bench-serve", "--model", "llama-3-8b", "--num-prompts", "2",
                     "--random-input-len", "32", "--random-output-len", "5000",
                     "--max-model-len", "1024", "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning: 2 of 2 requests asked for more output than max_model_len (1024)" in proc.stderr
    import json

    assert json.loads(proc.stdout)["total_output_tokens"] == 2 * (1024 - 32)
