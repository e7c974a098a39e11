#!/usr/bin/env bash
# One device call for lossless weight compression (issue 20): the ECF kernels' GPU tests, then
# compressed_decode.py (bf16, ECF decoded at load, ECF in the kernels), then bf16 batch-1 decode on a
# baseline tree and this one (the GEMV kernel gained the ECF path: does bf16 still run as fast?).
#
#   bash benchmarks/compressed_check.sh OUT_DIR [BASELINE_DIR] [all|tests|decode|capacity|kernels|batch1|batched|sharded]
#
# batch1 (the next call for the batch-1 target): ecf_gemv_probe.py --block-n (the GEMVs' rows a program
# and loading ahead, ECF and "phases"; then the ECF GEMV's fused norm/SiLU against the separate
# kernels), compressed_decode.py at batch 1 (bf16 on "tiles"; "phases" with the separate norm and SiLU
# kernels, the default dense form, which ECF equals bit for bit; ECF in the kernels, as they are and with
# the sweep's best settings per shape), then the kernels' GPU tests.
# kernels (short, first after a kernel change): ecf_gemv_probe.py (each GEMV against bf16 at the
# Llama-3.1-8B shapes, exactness included; PROBE_ARGS for its options), bf16 batch-1
# decode on the baseline tree and this one, then the kernels' GPU tests.
# batched (the next call for the batch-32/64 target): gemm_probe.py (first the ECF GEMV, scratch
# decode and GEMM with a coded weight's planes further apart; then the phase GEMM on dense and coded weights
# against cuBLAS over a grid of launches, in their own layout, slice by slice and in K tiles of 128, at 32 rows
# unless PROBE_ARGS says otherwise, and each shape's best), then, if 200 s are left, compressed_decode.py at
# batches 1/32/64 (bf16 on cuBLAS; the same weights dense and coded in K tiles of 128 with batches on the phase
# GEMM, at the sweep's launches: the coded model must give the dense one's tokens; CD_VARIANTS=bf16,
# ecf-decode-at-load-gemm,ecf-kernel-gemm for the tiles the layers use now), then the GEMM's and the GEMVs' GPU
# tests (tiles of 128 among them).
# capacity: compressed_capacity.py on the Llama-3.1-70B shape (an H200), then the weights' GPU tests.
# sharded (a call of 2 or 4 GPUs): coded weights in the kernels under TP and PP, against the original sharded
# the same way (the layouts that fit the machine's GPUs).
# SITE (default /tmp/site) must hold the project's dependencies, the grammar engine (llguidance) included:
# the engine imports it, so without it no engine step runs.
# Each step has its own time bound (CD_TIMEOUT for compressed_decode.py), so one slow step cannot eat the call.
set -u
out=$1
baseline=${2:-}
what=${3:-all}
site=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1 PYTHONPATH=$site:$PWD:$PWD/sdk:$PWD/benchmarks
nvidia-smi -L
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
gpu_tests() {  # gpu_tests TIMEOUT LOG PATHS...
    local limit=$1 log=$2; shift 2
    timeout "$limit" python3 -m pytest -q -m gpu "$@" -p no:cacheprovider --maxfail=20 --timeout 120 \
        --continue-on-collection-errors -rf 2>&1 \
        | tee "$out/$log" | tail -12
}
ab_decode() {  # bf16 batch-1 decode, baseline tree then this one
    for tree in "$baseline" "$PWD"; do
        name=$([ "$tree" = "$PWD" ] && echo this || echo baseline)
        echo "== bf16 decode_latency, $name tree"
        PYTHONPATH=$site:$tree:$tree/sdk timeout 90 python3 "$tree/benchmarks/decode_latency.py" \
            --variants graphs --repeats 2 --out "$out/decode_latency_$name.json" | tail -2
    done
}
if [ "$what" = all ] || [ "$what" = tests ]; then
    echo "== GPU tests: ECF kernels, bf16 GEMV, compressed loading"
    gpu_tests 170 gpu_tests_ecf.log tests/gpu_backend/kernels/test_triton_ecf_linear.py tests/gpu_backend/kernels/test_triton_gemm.py \
        tests/gpu_backend/kernels/test_triton_linear.py tests/gpu_backend/weights
fi
if [ "$what" = all ] || [ "$what" = decode ]; then
    echo "== compressed_decode"
    timeout "${CD_TIMEOUT:-300}" python3 benchmarks/compressed_decode.py --out "$out/compressed_decode.json" \
        ${CD_ARGS:-}
    if [ -n "$baseline" ]; then  # last: the A/B is the step a short call can lose
        ab_decode
    fi
fi
if [ "$what" = kernels ]; then
    echo "== ecf_gemv_probe"
    timeout 200 python3 benchmarks/ecf_gemv_probe.py --out "$out/ecf_gemv_probe.json" ${PROBE_ARGS:-} | tail -30
    [ -n "$baseline" ] && ab_decode
    gpu_tests 120 gpu_tests_kernels.log tests/gpu_backend/kernels/test_triton_ecf_linear.py tests/gpu_backend/kernels/test_triton_gemm.py \
        tests/gpu_backend/kernels/test_triton_linear.py tests/gpu_backend/weights/test_compressed_kernels_gpu.py
fi
if [ "$what" = batch1 ]; then
    echo "== ecf_gemv_probe --block-n"
    timeout 200 python3 benchmarks/ecf_gemv_probe.py --block-n --out "$out/ecf_gemv_probe_block_n.json" | tail -18
    echo "== compressed_decode, batch 1"
    variants=bf16,ecf-decode-at-load,ecf-kernel tuning=()
    if [ -s "$out/ecf_gemv_probe_block_n.json" ]; then  # the sweep's best settings, ECF in the engine with them
        variants=$variants,ecf-kernel-tuned tuning=(--gemv-tuning "$out/ecf_gemv_probe_block_n.json")
    fi
    timeout "${CD_TIMEOUT:-270}" python3 benchmarks/compressed_decode.py --batches 1 --repeats 2 --new-tokens 128 \
        --variants $variants "${tuning[@]}" --out "$out/compressed_decode_batch1.json" ${CD_ARGS:-}
    left=$(( ${CALL_SECONDS:-560} - SECONDS ))  # the tests take what the call has left, if it is worth it
    if [ "$left" -ge 60 ]; then
        gpu_tests "$left" gpu_tests_kernels.log tests/gpu_backend/kernels/test_triton_ecf_linear.py \
            tests/gpu_backend/kernels/test_triton_linear.py tests/gpu_backend/weights/test_compressed_kernels_gpu.py
    fi
fi
if [ "$what" = batched ]; then
    echo "== gemm_probe"
    timeout "${PROBE_TIMEOUT:-300}" python3 benchmarks/gemm_probe.py --out "$out/gemm_probe.json" \
        ${PROBE_ARGS:---rows 32} | grep -v "^ "
    left=$(( ${CALL_SECONDS:-560} - SECONDS ))
    if [ "$left" -ge 200 ]; then  # the engine on the layout it runs: worth it only with the time to finish
        echo "== compressed_decode, batches on the phase GEMM"
        tuning=()
        [ -s "$out/gemm_probe.json" ] && tuning=(--gemm-tuning "$out/gemm_probe.json")
        timeout "$(( left - 45 ))" python3 benchmarks/compressed_decode.py --batches 1,32,64 --repeats 2 \
            --new-tokens 128 --variants "${CD_VARIANTS:-bf16,ecf-decode-at-load-gemm128,ecf-kernel-gemm128}" \
            "${tuning[@]}" --out "$out/compressed_decode_gemm.json" ${CD_ARGS:-}
    fi
    left=$(( ${CALL_SECONDS:-560} - SECONDS ))
    if [ "$left" -ge 45 ]; then
        gpu_tests "$left" gpu_tests_gemm.log tests/gpu_backend/kernels/test_triton_gemm.py \
            tests/gpu_backend/kernels/test_triton_ecf_linear.py tests/gpu_backend/weights/test_compressed_kernels_gpu.py
    fi
fi
if [ "$what" = capacity ]; then
    echo "== compressed_capacity"
    timeout "${CAP_TIMEOUT:-420}" python3 benchmarks/compressed_capacity.py --out "$out/compressed_capacity.json"
    gpu_tests 120 gpu_tests_weights.log tests/gpu_backend/weights
fi
if [ "$what" = sharded ]; then
    echo "== GPU tests: coded weights under TP and PP"
    gpu_tests "${SHARDED_TIMEOUT:-400}" gpu_tests_sharded.log tests/gpu_backend/weights/test_compressed_sharded_gpu.py
fi
