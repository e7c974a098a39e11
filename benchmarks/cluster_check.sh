#!/usr/bin/env bash
# One device call for the cluster redesign: the same benchmarks on this tree and on a baseline
# tree (another commit, unpacked beside this one), back to back on the same GPU, then the GPU tests.
#
#   [BASELINE_SERVING=0] [TESTS_TIMEOUT=S] bash benchmarks/cluster_check.sh BASELINE_DIR OUT_DIR [perf|baseline|ab|tests|all]
#
# Figures go to OUT_DIR as <benchmark>.json (this tree) and <benchmark>_baseline.json; the test log
# as gpu_tests.log. "baseline" runs the baseline tree's benchmarks alone; "ab" alternates the two trees'
# serving runs twice, to tell a difference from run-to-run spread. Each step has its own time bound, so one slow step cannot eat the call.
set -u
baseline=$1
out=$2
what=${3:-all}
site=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'

perf() {  # perf TREE SUFFIX SERVING(0|1)
    local tree=$1 suffix=$2
    PYTHONPATH=$site:$tree:$tree/sdk timeout 150 python3 "$tree/benchmarks/decode_latency.py" \
        --variants graphs --out "$out/decode_latency$suffix.json" | tail -4
    [ "$3" = 1 ] || return 0
    PYTHONPATH=$site:$tree:$tree/sdk timeout 150 python3 "$tree/benchmarks/disagg_serving.py" \
        --layouts colocated:1 --rates 2,8 --num-prompts 32 --out "$out/disagg_serving$suffix.json" | tail -8
}

if [ "$what" = ab ]; then  # serving at 8 req/s, 64 prompts: baseline, this, baseline, this on one GPU
    for i in 1 2; do
        for tree in "$baseline" "$PWD"; do
            name=$([ "$tree" = "$PWD" ] && echo this || echo baseline)
            PYTHONPATH=$site:$tree:$tree/sdk timeout 120 python3 "$tree/benchmarks/disagg_serving.py" \
                --layouts colocated:1 --rates 8 --num-prompts 64 --out "$out/serving_${name}_$i.json" \
                | grep -E "TTFT p50|TPOT p50|TPOT p99"
        done
    done
elif [ "$what" = baseline ]; then  # the baseline tree alone, when this tree's figures are already in
    perf "$baseline" _baseline 1
elif [ "$what" != tests ]; then
    perf "$baseline" _baseline "${BASELINE_SERVING:-1}"  # BASELINE_SERVING=0: compare serving with the record
    perf "$PWD" "" 1
fi
if [ "$what" = tests ] || [ "$what" = all ]; then
    PYTHONPATH=$site:$PWD:$PWD/sdk timeout "${TESTS_TIMEOUT:-300}" python3 -m pytest -q -m gpu tests/gpu_backend \
        -p no:cacheprovider --maxfail=10 --continue-on-collection-errors --timeout 120 2>&1 | tee "$out/gpu_tests.log" | tail -15
fi
