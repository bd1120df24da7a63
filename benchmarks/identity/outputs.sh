#!/usr/bin/env bash
# Outputs a refactor must leave byte for byte (issue 25's "done when"): every shipped
# scenario's `comem run --json`, `comem paper --json`, a few `bench-serve` and
# `predict-static` lines, `engine-sim`, `families`. Usage, from the repository root:
#   bash benchmarks/identity/outputs.sh OUTDIR          # write them
#   diff -r BEFORE AFTER                                # compare two trees' outputs
# Both runs must use the same worker count (results do not depend on it, timings lines do
# not appear in --json). Paths under OUTDIR and progress estimates are masked. ~7 min on 2 cores.
set -euo pipefail
out=${1:?usage: outputs.sh OUTDIR}
mkdir -p "$out"
comem=${COMEM:-.venv/bin/comem}
for f in scenarios/*.toml scenarios/paper/*.toml; do
  name=$(echo "$f" | tr '/' '_')
  $comem run "$f" --json --allow-large > "$out/run_$name.json" 2> "$out/run_$name.err" || echo "exit $?" >> "$out/run_$name.err"
done
$comem paper --json --workers 2 --out "$out/paper_dir" > "$out/paper.json" 2> "$out/paper.err"
rm -f "$out/paper_dir/"*.png "$out/paper_dir/"*.pdf
$comem bench-serve --model meta-llama/Llama-3.1-8B-Instruct --num-prompts 200 --json > "$out/bs1.json" 2>&1 || true
$comem bench-serve --model Qwen/Qwen3-32B --tensor-parallel-size 2 --max-concurrency 16 --random-input-len 4096 --random-output-len 256 --num-prompts 160 --json > "$out/bs2.json" 2>&1 || true
$comem bench-serve --model Qwen/Qwen3-32B --request-rate 4 --num-prompts 200 --json > "$out/bs3.json" 2>&1 || true
$comem bench-serve --model meta-llama/Llama-3.1-8B-Instruct --num-prompts 100 > "$out/bs_text.txt" 2>&1 || true
$comem predict-static --model Qwen/Qwen3-32B --tp 2 --batch 32 --input 2048 --output 256 > "$out/ps_text.txt" 2>&1 || true
$comem predict-static --model meta-llama/Llama-3.1-70B-Instruct --gpu h100_sxm --tp 4 --batch 8 --input 1024 --output 128 --json > "$out/ps1.json" 2>&1 || true
$comem engine-sim --json > "$out/engine_sim.json" 2>&1 || true
$comem families > "$out/families.txt" 2>&1 || true
cp figures/families/families.csv "$out/families.csv"
# what legitimately differs between two runs: the output directory's own name and
# wall-clock progress estimates
for f in "$out"/*.json "$out"/*.txt "$out"/*.err; do
  sed -i -e "s#$out#OUT#g" -e '/ s left$/d' "$f"
done
echo "done: $out"
