#!/usr/bin/env bash
# One device call for structured output (issue 19): llguidance's raw mask cost, then structured_decode.py
# (correctness check + free vs constrained decode, batch 32 and 1) in the variants asked for, then the GPU tests.
#
#   bash benchmarks/structured_check.sh OUT_DIR [diag|final|tests]
#
# diag: the mask's host cost four ways at batch 32 (as the engine runs it, with a cProfile of one run;
# torch.set_num_threads(1); OMP_WAIT_POLICY=PASSIVE; llguidance on 8 threads) and with unbounded name strings,
# to find where the host time goes. final: batch 32 and 1, each name schema, then the engine's and sampler's
# GPU tests. tests: every GPU test.
# Each step has its own time bound, so one slow step cannot eat the call.
set -u
out=$1
what=${2:-final}
site=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1 PYTHONPATH=$site:$PWD:$PWD/sdk:$PWD/benchmarks
nvidia-smi -L
python3 -c 'import torch, triton, llguidance; print("torch", torch.__version__, "triton", triton.__version__, "llguidance", llguidance.__version__ if hasattr(llguidance, "__version__") else "?")'
sd() {  # sd NAME ARGS...
    local name=$1; shift
    echo "== structured_decode $name: $*"
    timeout "${SD_TIMEOUT:-170}" python3 benchmarks/structured_decode.py --out "$out/structured_decode_$name.json" "$@" \
        | grep -vE "^\s+constrained text"
}
if [ "$what" = diag ]; then
    for variant in ${DIAG_VARIANTS:-default text torch1 passive llg8}; do
        case $variant in
            default) sd default --batches 32 --repeats 1 --new-tokens 256 --profile 128 ;;
            text) sd text --batches 32 --repeats 1 --new-tokens 256 --names text ;;
            torch1) sd torch1 --batches 32 --repeats 1 --new-tokens 256 --torch-threads 1 ;;
            passive) OMP_WAIT_POLICY=PASSIVE sd passive --batches 32 --repeats 1 --new-tokens 256 ;;
            llg8) sd llg8 --batches 32 --repeats 1 --new-tokens 256 --grammar-threads 8 ;;
        esac
    done
    [ -n "${DIAG_VARIANTS:-}" ] && exit 0  # a short call: the variants asked for only
    timeout 50 python3 benchmarks/grammar_mask_cost.py --out "$out/grammar_mask_cost.json" | tail -8
    timeout 80 python3 -m pytest -q -m gpu tests/gpu_backend/layers/test_sampler.py tests/gpu_backend/engine/test_llm_gpu.py \
        -p no:cacheprovider --timeout 60 2>&1 | tail -4
elif [ "$what" = final ]; then
    sd any --batches 32,1 --repeats 3 "${@:3}"
    sd text --batches 32,1 --repeats 3 --names text "${@:3}"
    sd lowercase --batches 32,1 --repeats 3 --names lowercase "${@:3}"
    sd any_llg12 --batches 32 --repeats 1 --grammar-threads 12  # llguidance's own default thread count, to compare
    timeout "${TESTS_TIMEOUT:-150}" python3 -m pytest -q -m gpu tests/gpu_backend/engine tests/gpu_backend/layers/test_sampler.py \
        --continue-on-collection-errors \
        -p no:cacheprovider --timeout 120 -rf 2>&1 | tee "$out/gpu_tests_engine.log" | tail -6
fi
if [ "$what" = tests ]; then
    timeout "${TESTS_TIMEOUT:-400}" python3 -m pytest -q -m gpu tests/gpu_backend -p no:cacheprovider --maxfail=10 \
        --continue-on-collection-errors --timeout 120 2>&1 | tee "$out/gpu_tests.log" | tail -15
fi
