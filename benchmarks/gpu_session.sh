#!/usr/bin/env bash
# shellcheck disable=SC2016,SC2329  # awk programs in single quotes; step functions run through run_step
# GPU session: every GPU measurement autoseg wants, as one prepared script for a lent GPU machine (issue 13).
#
# Steps, in this order, each under its own `timeout` so the whole script ends within --budget seconds (default
# 510 s, under 9 minutes); a failing step never stops the later ones:
#   env             what the machine has (nvidia-smi, python/torch versions, whether torch sees CUDA); picks a
#                   python with torch+CUDA, installs the carried wheels and autoseg (offline) and checks autoseg's
#                   dependencies (numpy SimpleITK batchgenerators scipy tqdm matplotlib; acvl-utils/cc3d optional)
#   data            Dataset004_Hippocampus from $AUTOSEG_TEST_DATA (default ../shared/datasets), shared/datasets in
#                   the checkout or the carried copy build/gpu_session/datasets (linked into $AUTOSEG_TEST_DATA for
#                   the benchmarks), else synthetic `autoseg demo` data;
#                   `autoseg plan` + `autoseg preprocess -c 3d_fullres`
#   memory_model    benchmarks/memory_model.py --fit: on CUDA mixed precision, budgets 4/8/16 GB, measured with
#                   torch.cuda.max_memory_allocated; the nvidia-smi peak of the step is in the steps table
#   throughput_model  benchmarks/throughput_model.py [--device cuda] (--quick when HC18 is absent: its full plan
#                   list needs both datasets); skipped with a note when the file is absent
#   train_auto, train_float32   `autoseg train` Hippocampus 3d_fullres fold 0 for a fixed number of iterations,
#                   --precision auto (float16 autocast on CUDA) against float32; seconds per iteration from the
#                   fold's log.jsonl (train_seconds / iterations of every epoch but the first, a warm-up)
#   predict         `autoseg predict` of 20 cases with that checkpoint, with and without mirroring (TTA)
#   nnunet_train_speed, nnunet_predict_speed   benchmarks/train_speed.py / predict_speed.py (autoseg next to
#                   nnU-Net v2, CPU comparisons) when nnU-Net is importable there, else "skipped: nnU-Net not
#                   installable offline" (neither script has an autoseg-only mode)
# Results: $OUT/summary.md (every table) and one log per group of steps, 8 files at most (the device tool's
# limit): summary.md env.log data.log memory_model.log memory_model.json throughput_model.log autoseg_speed.log
# nnunet.log. Without $OUT (not on the device machine) they go to build/gpu_session/results.
#
# How to run it on a lent GPU (the `device` tool, whose notes describe the machine and what travels):
#   1. Here, once per checkout (with network):  bash benchmarks/gpu_session.sh --prepare
#      The GPU machine has no network and no SimpleITK or batchgenerators: this downloads their wheels for its
#      python 3.12 into .whl/ (git-ignored) and copies the first --cases Hippocampus and --hc18-cases HC18 cases
#      into build/gpu_session/datasets (git-ignored); checkout + .whl + data must stay under 64 MiB (it checks).
#   2. The `run` tool: command "bash benchmarks/gpu_session.sh", timeout_s 560,
#      carry [".whl", "build/gpu_session"]. The files come back under the reply's files_at.
#      Rerun only some steps with --only (e.g. --only throughput_model,train --budget 300).
#   3. Copy summary.md's tables into docs/planning.md ("GPU session") and the fit line into
#      PRECISIONS["mixed"] of autoseg/planning/memory_model.py.
#   Test here first, on the CPU with tiny settings (about 3.5 minutes on 2 shared cores; the CUDA and nnU-Net parts
#   say why they are skipped):  bash benchmarks/gpu_session.sh --dry-run [--synthetic] [--only ...] [--out DIR]
#
# Options: --dry-run, --prepare, --synthetic (ignore real data), --only STEP[,STEP] (memory_model,
# throughput_model, train, predict, nnunet; env and data always run; predict needs train's checkpoint),
# --budget SECONDS, --out DIR, --cases N / --hc18-cases N (with --prepare; default 60 / 30),
# --nnunet-venv DIR (nnU-Net v2's virtualenv for the nnunet steps).
# Folders, none of one machine: results in --out, else $OUT, else build/gpu_session/results (a dry run:
# gpu_session_dry_run in $TMPDIR, else the system's temporary folder); scratch files in a fresh folder made by
# `mktemp -d -t` (in $TMPDIR likewise); the shared datasets in $AUTOSEG_TEST_DATA, else ../shared/datasets beside
# the project root; nnU-Net's virtualenv from --nnunet-venv, else $NNUNET_PEER_VENV, else the one
# ../shared/tools/nnunet-peer/setup.sh creates without arguments (nnunet-peer/venv in the temporary folder).
# Exit status: 0 every step ran or was skipped by design, 1 a step failed or timed out, 2 bad arguments,
# 3 no python with a CUDA-capable torch (the finding is in $OUT/summary.md), 4 autoseg's dependencies missing.

set -u -o pipefail

usage() { sed -n '3,/^$/p' "$0" | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
PREPARE=0
FORCE_SYNTHETIC=0
BUDGET_S=""
ONLY=""
HIPPOCAMPUS_CASES=60
HC18_CASES=30
OUT_ARG=""
NNUNET_VENV_ARG=""
while (($#)); do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --prepare) PREPARE=1 ;;
        --synthetic) FORCE_SYNTHETIC=1 ;;
        --only) ONLY=${2:?--only needs step names}; shift ;;
        --budget) BUDGET_S=${2:?--budget needs seconds}; shift ;;
        --cases) HIPPOCAMPUS_CASES=${2:?--cases needs a number}; shift ;;
        --hc18-cases) HC18_CASES=${2:?--hc18-cases needs a number}; shift ;;
        --out) OUT_ARG=${2:?--out needs a folder}; shift ;;
        --nnunet-venv) NNUNET_VENV_ARG=${2:?--nnunet-venv needs a folder}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for step in ${ONLY//,/ }; do
    case $step in
        memory_model|throughput_model|train|predict|nnunet) ;;
        *) echo "--only: unknown step '$step' (memory_model, throughput_model, train, predict, nnunet)" >&2; exit 2 ;;
    esac
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
HIPPOCAMPUS=Dataset004_Hippocampus
HC18=Dataset018_HC18
# Where the benchmarks look (benchmarks/locations.py): $AUTOSEG_TEST_DATA, else ../shared/datasets; exported so
# that they look where this script links the carried copy.
SHARED_DIR=${AUTOSEG_TEST_DATA:-$REPO/../shared/datasets}
export AUTOSEG_TEST_DATA=$SHARED_DIR
TEMPORARY=${TMPDIR:-/tmp}               # the system's temporary folder, as mktemp -t and Python's tempfile use it
CARRY_ROOT=build/gpu_session            # git-ignored (build/); carried together with .whl
CARRY_DATA=$CARRY_ROOT/datasets
WHEELS=.whl                             # git-ignored (/.whl/)
CONFIGURATION=3d_fullres
FULL_PLAN=$CARRY_ROOT/${HIPPOCAMPUS}_plans.json   # the whole dataset's plans.json, made by --prepare
REQUIRED_MODULES=(numpy SimpleITK batchgenerators scipy tqdm matplotlib torch)
OPTIONAL_MODULES=(acvl_utils cc3d)      # autoseg labels components with scipy when cc3d is absent

plan_line() {  # plan_line PLANS.JSON: "patch PxQxR batch B" of the training configuration, or nothing
    "${PY:-${PYTHON:-python3}}" - "$1" "$CONFIGURATION" <<'EOF' 2>/dev/null
import json, sys
configuration = json.load(open(sys.argv[1]))["configurations"][sys.argv[2]]
print(f"patch {'x'.join(map(str, configuration['patch_size']))} batch {configuration['batch_size']}")
EOF
}

subset_dataset() {  # subset_dataset SOURCE TARGET N copy|link: a raw dataset folder of SOURCE's first N cases
    local source=$1 target=$2 count=$3 how=$4 image case_id done=0 python=${PY:-${PYTHON:-python3}}
    rm -rf "$target"
    mkdir -p "$target/imagesTr" "$target/labelsTr"
    while read -r image; do
        case_id=$(basename "$image" _0000.nii.gz)
        if [[ $how == copy ]]; then
            cp "$image" "$target/imagesTr/" && cp "$source/labelsTr/$case_id.nii.gz" "$target/labelsTr/" || return 1
        else
            ln -s "$image" "$target/imagesTr/" && ln -s "$source/labelsTr/$case_id.nii.gz" "$target/labelsTr/" \
                || return 1
        fi
        done=$((done + 1))
    done < <(find "$source/imagesTr" -name '*_0000.nii.gz' | sort | head -n "$count")
    find "$source" -maxdepth 1 -name '*.json' ! -name dataset.json -exec cp -t "$target" {} +
    "$python" - "$source/dataset.json" "$target/dataset.json" "$done" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))
meta["description"] = f"{meta.get('description', '')} (first {sys.argv[3]} of {meta.get('numTraining')} cases)"
meta["numTraining"] = int(sys.argv[3])
json.dump(meta, open(sys.argv[2], "w"), indent=2)
EOF
}

# ----------------------------------------------------------------------------------------------------------------
# --prepare: run HERE (with network) before the `run` call.
# ----------------------------------------------------------------------------------------------------------------
prepare() {
    local python=${PYTHON:-python3} spec package version name count tree extra total limit=$((64 * 1024 * 1024))
    mkdir -p "$WHEELS"
    # The device's python 3.12 has numpy, scipy, tqdm, matplotlib, scikit-image, pandas... but neither SimpleITK nor
    # batchgenerators (the device tool's notes on its machine kinds). The versions installed here; acvl-utils is
    # sdist-only and optional. SimpleITK's wheel is ~50 MiB of the 64 MiB that may travel.
    for spec in SimpleITK:2.5.7 batchgenerators:0.25.5; do
        package=${spec%%:*}
        version=$("$python" -c "import importlib.metadata as m; print(m.version('$package'))" 2>/dev/null) \
            || version=${spec#*:}
        if compgen -G "$WHEELS/${package,,}-*.whl" >/dev/null; then
            echo "$WHEELS: a $package wheel is already there"
            continue
        fi
        "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$WHEELS" "$package==$version" || { echo "pip download of $package==$version failed" >&2; return 1; }
    done
    for spec in "$HIPPOCAMPUS:$HIPPOCAMPUS_CASES" "$HC18:$HC18_CASES"; do
        name=${spec%%:*}
        count=${spec#*:}
        if [[ ! -f $SHARED_DIR/$name/dataset.json ]]; then
            echo "$SHARED_DIR/$name not found: the session will do without it"
            continue
        fi
        if ((count == 0)); then rm -rf "${CARRY_DATA:?}/$name"; continue; fi
        subset_dataset "$SHARED_DIR/$name" "$CARRY_DATA/$name" "$count" copy || return 1
        echo "copied the first $count cases of $name to $CARRY_DATA/$name"
    done
    # The 5 % dataset cap makes a subset's plan smaller (60 cases: batch 2, not 7): the training steps use the full
    # dataset's batch, from its plan made here.
    if [[ -f $SHARED_DIR/$HIPPOCAMPUS/dataset.json ]]; then
        local plan_work
        plan_work=$(mktemp -d -t gpu_session_plan.XXXXXX)
        if ! PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} "$python" -m autoseg plan "$SHARED_DIR/$HIPPOCAMPUS" \
            --work-dir "$plan_work" --workers 2 >"$plan_work/plan.log" 2>&1; then
            tail -n 20 "$plan_work/plan.log" >&2
            rm -rf "$plan_work"
            echo "autoseg plan of $HIPPOCAMPUS failed" >&2
            return 1
        fi
        cp "$plan_work/$HIPPOCAMPUS/plans.json" "$FULL_PLAN"
        rm -rf "$plan_work"
        echo "$FULL_PLAN: the full dataset's plans ($CONFIGURATION $(plan_line "$FULL_PLAN"))"
    fi
    tree=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 -r du -cb 2>/dev/null \
        | awk '$2 == "total" {s += $1} END {print s + 0}')
    extra=$(du -cb "$WHEELS" "$CARRY_ROOT" | awk 'END {print $1}')
    total=$((tree + extra))
    echo "travels: checkout $tree B + .whl and $CARRY_ROOT $extra B = $((total / 1048576)) MiB of 64 MiB"
    ((total < limit)) || { echo "over 64 MiB: lower --cases / --hc18-cases" >&2; return 1; }
    echo "next: the run tool, command 'bash benchmarks/gpu_session.sh', timeout_s 560," \
        "carry [\"$WHEELS\", \"$CARRY_ROOT\"]"
}

if ((PREPARE)); then
    prepare
    exit $?
fi

# ----------------------------------------------------------------------------------------------------------------
# Settings: the GPU session, or --dry-run (CPU, tiny).
# LIMITS[step] = "cap reserve": the step's timeout is min(cap, seconds to the deadline - reserve), the reserve
# being kept for the steps after it (so a slow step cannot starve them).
# ----------------------------------------------------------------------------------------------------------------
if ((DRY_RUN)); then
    MODE="dry-run (CPU, tiny settings)"
    DEVICE=cpu
    BUDGET_S=${BUDGET_S:-400}
    OUT=${OUT_ARG:-${OUT:-$TEMPORARY/gpu_session_dry_run}}
    DATA_CASES=12                       # cases linked from the real dataset, or generated
    MEMORY_ARGS=(--quick --budgets 0.5 --steps 1)
    TRAIN_ARGS=(--epochs 2 --iterations-per-epoch 1 --batch-size 2)
    PREDICT_CASES=1
    declare -A LIMITS=([data]="90 300" [memory_model]="150 220" [throughput_model]="150 80" [train_auto]="40 40"
                       [train_float32]="40 20" [predict]="40 0" [nnunet]="60 0")
else
    MODE="GPU session"
    DEVICE=cuda
    BUDGET_S=${BUDGET_S:-510}
    OUT=${OUT_ARG:-${OUT:-$REPO/$CARRY_ROOT/results}}
    DATA_CASES=0                        # every case there is
    MEMORY_ARGS=()                      # memory_model.py picks mixed precision and 4/8/16 GB by itself on CUDA
    TRAIN_ARGS=(--epochs 4 --iterations-per-epoch 25)   # epoch 1 warms up: 75 timed iterations
    PREDICT_CASES=20
    declare -A LIMITS=([data]="90 360" [memory_model]="180 225" [throughput_model]="170 125" [train_auto]="60 80"
                       [train_float32]="60 35" [predict]="45 0" [nnunet]="120 0")
fi
wanted() { [[ -z $ONLY || ,$ONLY, == *,$1,* ]]; }
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
mkdir -p "$OUT" || exit 2
rm -f "$OUT"/*.log "$OUT"/memory_model.json "$OUT"/summary.md
SCRATCH=$(mktemp -d -t gpu_session.XXXXXX)
STEPS=$SCRATCH/steps.tsv
: >"$STEPS"
WORK=$SCRATCH/work
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
NOTES=()
note() { NOTES+=("$*"); echo "note: $*"; }
elapsed() { echo $(($(date +%s) - START)); }

# ----------------------------------------------------------------------------------------------------------------
# The summary ($OUT/summary.md), rewritten after every step so that a run stopped early still leaves its tables.
# ----------------------------------------------------------------------------------------------------------------
section() {  # section TITLE FILE AWK: a titled, fenced block of the log lines AWK selects; nothing if none
    local lines
    [[ -s $2 ]] || return 0
    lines=$(grep -v '^=====' "$2" | awk "$3")
    [[ -n $lines ]] || return 0
    printf '\n## %s\n\n```\n%s\n```\n' "$1" "$lines"
}

write_summary() {
    {
        echo "# GPU session: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "mode: $MODE; $(elapsed) s of a ${BUDGET_S} s budget${ONLY:+; --only $ONLY}"
        echo
        [[ -s $SCRATCH/facts.md ]] && cat "$SCRATCH/facts.md"
        ((${#NOTES[@]})) && printf -- '- %s\n' "${NOTES[@]}"
        echo
        echo "## Steps"
        echo
        echo "| step | status | seconds | log | GPU peak memory.used MiB | GPU mean utilisation % |"
        echo "|---|---|---|---|---|---|"
        awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6}' "$STEPS"
        section "Memory model (benchmarks/memory_model.py --fit)" "$OUT/memory_model.log" \
            '/^precision / {on = 1} on {print}'
        section "Throughput model (benchmarks/throughput_model.py), last 30 lines" "$OUT/throughput_model.log" \
            '{l[NR] = $0} END {for (i = NR - 29; i <= NR; i++) if (i in l) print l[i]}'
        if [[ -s $SCRATCH/train_table.md ]]; then
            printf '\n## autoseg training speed (%s, %s, fold 0, device %s)\n\n' "$DATASET_LABEL" "$CONFIGURATION" \
                "$DEVICE"
            cat "$SCRATCH/train_table.md"
        fi
        if [[ -s $SCRATCH/predict_table.md ]]; then
            printf '\n## autoseg prediction speed (wall time of the whole command / cases, start-up included)\n\n'
            cat "$SCRATCH/predict_table.md"
        fi
        section "autoseg next to nnU-Net v2 (train_speed.py, predict_speed.py: CPU comparisons)" "$OUT/nnunet.log" \
            '/ratio|s\/case|s\/it|^dataset|^command|^autoseg|^nnU-Net|parameters/'
    } >"$OUT/summary.md.partial" && mv "$OUT/summary.md.partial" "$OUT/summary.md"
}

# ----------------------------------------------------------------------------------------------------------------
# Steps: run_step NAME LOG LIMITS_KEY COMMAND...; COMMAND may be one of this script's (exported) functions.
# ----------------------------------------------------------------------------------------------------------------
record() {  # record NAME STATUS SECONDS LOG [GPU peak] [GPU mean utilisation]
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:--}" "${6:--}" >>"$STEPS"
    write_summary
}

skip() {  # skip NAME LOG REASON
    echo "===== $1: skipped: $3" >>"$OUT/$2.log"
    echo "[$(elapsed) s] $1: skipped: $3"
    record "$1" "skipped: $3" 0 "$2.log"
}

SAMPLER_PID=""
GPU_SAMPLING=0
start_sampler() {
    ((GPU_SAMPLING)) || return 0
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader,nounits -lms 500 \
        >"$SCRATCH/gpu_$1.csv" 2>/dev/null &
    SAMPLER_PID=$!
}

stop_sampler() {  # prints "peak mean" of the step's samples
    if [[ -z $SAMPLER_PID ]]; then echo "- -"; return 0; fi
    kill "$SAMPLER_PID" 2>/dev/null
    wait "$SAMPLER_PID" 2>/dev/null
    SAMPLER_PID=""
    awk -F', *' 'NF >= 2 {if ($1 > peak) peak = $1; util += $2; n++}
                 END {if (n) printf "%d %.0f\n", peak, util / n; else print "- -"}' "$SCRATCH/gpu_$1.csv"
}

FAILED=0
declare -A EXIT1_MEANS=([throughput_model]="fewer than 10 configurations predicted within 20 %, see its table")
run_step() {
    local name=$1 log=$2 cap reserve left limit started rc status seconds gpu
    read -r cap reserve <<<"${LIMITS[$3]}"
    shift 3
    left=$((DEADLINE - $(date +%s) - reserve))
    limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        skip "$name" "$log" "out of time ($((DEADLINE - $(date +%s))) s of the budget left)"
        return 1
    fi
    echo "===== $name: $* (timeout ${limit} s)" >>"$OUT/$log.log"
    echo "[$(elapsed) s] $name: running (timeout ${limit} s, log $log.log)"
    start_sampler "$name"
    started=$(date +%s)
    timeout -k 10 "$limit" bash -c '"$@"' _ "$@" >>"$OUT/$log.log" 2>&1
    rc=$?
    seconds=$(($(date +%s) - started))
    gpu=$(stop_sampler "$name")
    case $rc in
        0) status=ok ;;
        124|137) status="TIMEOUT after ${limit} s"; FAILED=1 ;;
        1) status="FAILED (exit 1${EXIT1_MEANS[$name]:+: ${EXIT1_MEANS[$name]}})"; FAILED=1 ;;
        *) status="FAILED (exit $rc)"; FAILED=1 ;;
    esac
    echo "===== $name: $status in ${seconds} s" >>"$OUT/$log.log"
    echo "[$(elapsed) s] $name: $status in ${seconds} s"
    # shellcheck disable=SC2086  # $gpu is two fields, "peak mean"
    record "$name" "$status" "$seconds" "$log.log" $gpu
    return "$rc"
}

# ----------------------------------------------------------------------------------------------------------------
# Step env: machine, python, dependencies, autoseg.
# ----------------------------------------------------------------------------------------------------------------
probe_python() {  # probe_python PYTHON: one line "python=... torch=... cuda=True|False ..." or a failure
    timeout 60 "$1" - <<'EOF' 2>/dev/null
import sys, torch
cuda = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if cuda else "-"
print(f"python={sys.version.split()[0]} torch={torch.__version__} cuda={cuda} cuda_version={torch.version.cuda} "
      f"device={name.replace(' ', '_')}")
EOF
}

check_modules() {  # "module version" or "module MISSING error" per line, with the chosen python and PYTHONPATH
    "$PY" - "${REQUIRED_MODULES[@]}" "${OPTIONAL_MODULES[@]}" <<'EOF'
import importlib, importlib.metadata, sys
distributions = {"acvl_utils": "acvl-utils", "cc3d": "connected-components-3d"}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
    except Exception as error:  # a broken install is as missing as an absent one
        print(name, "MISSING", type(error).__name__)
        continue
    try:
        version = importlib.metadata.version(distributions.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", "present")
    print(name, version)
EOF
}

missing_required() {
    check_modules 2>/dev/null \
        | awk -v wanted=" ${REQUIRED_MODULES[*]} " '$2 == "MISSING" && index(wanted, " " $1 " ") {print $1}' | xargs
}

install_wheels() {  # the newest carried wheel of each package autoseg may lack, into a folder put on PYTHONPATH
    local site=$SCRATCH/site wheels=() package file
    for package in simpleitk batchgenerators connected_components_3d acvl_utils; do
        file=$(find "$WHEELS" -maxdepth 1 -iname "$package-*.whl" 2>/dev/null | sort -V | tail -n 1)
        [[ -n $file ]] && wheels+=("$file")
    done
    if ((${#wheels[@]} == 0)); then
        echo "no wheels in $WHEELS: run 'bash benchmarks/gpu_session.sh --prepare' here and carry .whl"
        return 1
    fi
    timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$site" "${wheels[@]}" || return 1
    export PYTHONPATH=$site:$PYTHONPATH
    echo "installed into $site: ${wheels[*]}"
}

environment() {  # sets PY (a python whose torch sees CUDA; any torch in a dry run), PY_LINE and GPU_LINE
    local candidate line resolved seen=" "
    {
        echo "## machine"
        date -u
        uname -a
        echo "cpus: $(nproc)"
        free -g 2>/dev/null | head -n 2
        echo "## nvidia-smi"
        if command -v nvidia-smi >/dev/null; then timeout 30 nvidia-smi || echo "nvidia-smi failed"
        else echo "nvidia-smi: not on PATH"; fi
        echo "## pythons"
    } >>"$OUT/env.log" 2>&1
    GPU_LINE=$(timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
        | head -n 1)
    # The device image's python3 is the one with PyTorch (PYTHON=... names another); ../venv is this project's CPU venv.
    for candidate in ${PYTHON:-} python3 python "$REPO/../venv/bin/python"; do
        command -v "$candidate" >/dev/null || continue
        resolved=$(command -v "$candidate")   # not readlink -f: a venv's python links to the system one
        [[ $seen == *" $resolved "* ]] && continue
        seen+="$resolved "
        line=$(probe_python "$candidate") || { echo "$candidate: no importable torch" >>"$OUT/env.log"; continue; }
        echo "$candidate ($(command -v "$candidate")): $line" >>"$OUT/env.log"
        if [[ -z $PY ]] && { ((DRY_RUN)) || [[ $line == *cuda=True* ]]; }; then
            PY=$(command -v "$candidate")
            PY_LINE=$line
        fi
    done
}

write_facts() {
    {
        echo "- GPU: ${GPU_LINE:-none (nvidia-smi absent or failed)}"
        echo "- python: ${PY:-none} ${PY_LINE}"
        [[ -n $DEPS_LINE ]] && echo "- modules: $DEPS_LINE"
        [[ -n $AUTOSEG_LINE ]] && echo "- autoseg: $AUTOSEG_LINE"
        [[ -n $DATASET_LINE ]] && echo "- data: $DATASET_LINE"
    } >"$SCRATCH/facts.md"
}

echo "$MODE: results in $OUT, scratch $SCRATCH, budget ${BUDGET_S} s"
env_started=$(date +%s)
PY="" PY_LINE="" GPU_LINE="" DEPS_LINE="" AUTOSEG_LINE="" DATASET_LINE="" DATASET_LABEL=""
environment
if [[ -z $PY ]]; then
    if ((DRY_RUN)); then what="no python with an importable torch"; else what="no python with a CUDA-capable torch"; fi
    note "$what among ${PYTHON:+$PYTHON }python3, python, ../venv/bin/python (PYTHON=... names another)" \
        "(env.log); nothing was measured"
    write_facts
    record env "FAILED: $what" "$(($(date +%s) - env_started))" env.log
    echo "$what: see $OUT/env.log" >&2
    exit 3
fi
((DRY_RUN == 0)) && [[ -n $GPU_LINE ]] && GPU_SAMPLING=1
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
missing=$(missing_required)
if [[ -n $missing ]]; then
    echo "## missing before the carried wheels: $missing" >>"$OUT/env.log"
    if install_wheels >>"$OUT/env.log" 2>&1; then note "$missing: installed from the carried wheels in $WHEELS"
    else note "could not install carried wheels for: $missing (env.log)"; fi
fi
if ((DRY_RUN)); then
    AUTOSEG_LINE="from PYTHONPATH=$REPO (dry run: the local environment is left alone)"
elif timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/env.log" 2>&1; then
    AUTOSEG_LINE="pip install --no-deps -e . (offline) into $PY; PYTHONPATH=$REPO as well"
else
    AUTOSEG_LINE="from PYTHONPATH=$REPO (pip install -e . did not work offline, see env.log)"
fi
{ echo "## modules"; check_modules; } >>"$OUT/env.log" 2>&1
DEPS_LINE=$(check_modules 2>/dev/null | awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}')
missing=$(missing_required)
write_facts
if [[ -n $missing ]]; then
    note "autoseg's dependencies missing here: $missing. Run 'bash benchmarks/gpu_session.sh --prepare'" \
        "where pip works and carry .whl"
    record env "FAILED: missing $missing" "$(($(date +%s) - env_started))" env.log
    exit 4
fi
record env ok "$(($(date +%s) - env_started))" env.log

# ----------------------------------------------------------------------------------------------------------------
# Step data: what the training and prediction use; the benchmarks read ../shared/datasets themselves.
# ----------------------------------------------------------------------------------------------------------------
find_dataset() {  # find_dataset NAME: the first folder holding NAME's dataset.json
    local candidate
    for candidate in "$SHARED_DIR/$1" "$REPO/shared/datasets/$1" "$REPO/$CARRY_DATA/$1"; do
        [[ -f $candidate/dataset.json ]] && { (cd "$candidate" && pwd); return 0; }
    done
    return 1
}

for name in "$HIPPOCAMPUS" "$HC18"; do
    root=$(find_dataset "$name") || { note "$name: not on this machine (benchmarks skip its rows)"; continue; }
    [[ $root == "$(cd "$SHARED_DIR/$name" 2>/dev/null && pwd)" ]] && continue
    # The benchmarks read REPOSITORY/../shared/datasets: show them the copy that travelled.
    if mkdir -p "$SHARED_DIR" 2>/dev/null && ln -sfn "$root" "$SHARED_DIR/$name"; then
        note "linked ../shared/datasets/$name -> $root" \
            "($(find "$root/imagesTr" -name '*.nii.gz' | wc -l) cases) for the benchmarks"
    else
        note "the benchmarks will not see $root (they read ../shared/datasets)"
    fi
done

prepare_data() {  # prepare_data ROOT: plan, and preprocess the training configuration
    "$PY" -m autoseg plan "$1" --work-dir "$WORK" --workers "$(nproc)" || return 1
    "$PY" -m autoseg preprocess "$1" -c "$CONFIGURATION" --work-dir "$WORK" --workers "$(nproc)"
}

generate_synthetic() {  # generate_synthetic N: autoseg demo's 3D generator (anisotropic MRI-like cases)
    "$PY" -m autoseg demo --data-only --kind 3d --num-cases "$1" --work-dir "$SCRATCH/demo" --no-progress
}
export -f prepare_data generate_synthetic
export PY WORK SCRATCH CONFIGURATION

DATA_ROOT=""
((FORCE_SYNTHETIC)) || DATA_ROOT=$(find_dataset "$HIPPOCAMPUS")
if [[ -n $DATA_ROOT ]]; then
    cases=$(find "$DATA_ROOT/imagesTr" -name '*_0000.nii.gz' | wc -l)
    if ((DATA_CASES > 0 && cases > DATA_CASES)); then
        subset_dataset "$DATA_ROOT" "$SCRATCH/data/$HIPPOCAMPUS" "$DATA_CASES" link
        DATASET_LINE="$HIPPOCAMPUS, first $DATA_CASES of $cases cases (linked from $DATA_ROOT)"
        DATA_ROOT=$SCRATCH/data/$HIPPOCAMPUS
        cases=$DATA_CASES
    else
        DATASET_LINE="$HIPPOCAMPUS, $cases cases in $DATA_ROOT"
    fi
    DATASET_LABEL="$HIPPOCAMPUS, $cases cases"
else
    cases=$((DRY_RUN ? 8 : 30))
    if ((FORCE_SYNTHETIC)); then why="--synthetic"; else why="no $HIPPOCAMPUS on this machine"; fi
    note "synthetic data ($why): autoseg demo's 3D generator, $cases cases for training and prediction"
    if wanted train || wanted predict; then run_step data_generate data data generate_synthetic "$cases"; fi
    DATA_ROOT=$SCRATCH/demo/demo_data/Dataset990_Demo3D
    DATASET_LINE="synthetic: autoseg demo --kind 3d, $cases cases ($why)"
    DATASET_LABEL="synthetic Dataset990_Demo3D, $cases cases"
fi
write_facts
MODEL=$WORK/$(basename "$DATA_ROOT")
if wanted train || wanted predict; then
    run_step data data data prepare_data "$DATA_ROOT"
    DATA_OK=$?
else
    DATA_OK=1
fi

# ----------------------------------------------------------------------------------------------------------------
# Step memory_model: calibration of the planner's training-memory estimate.
# ----------------------------------------------------------------------------------------------------------------
if wanted memory_model; then
    memory_args=(--fit --json "$OUT/memory_model.json" "${MEMORY_ARGS[@]}")
    if "$PY" benchmarks/memory_model.py --help 2>/dev/null | grep -q -- '--precision'; then
        memory_args+=(--precision "$([[ $DEVICE == cuda ]] && echo mixed || echo float32)")
    fi
    run_step memory_model memory_model memory_model "$PY" benchmarks/memory_model.py "${memory_args[@]}"
fi

# ----------------------------------------------------------------------------------------------------------------
# Step throughput_model: predicted against measured seconds per iteration.
# ----------------------------------------------------------------------------------------------------------------
if ! wanted throughput_model; then
    :
elif [[ ! -f benchmarks/throughput_model.py ]]; then
    skip throughput_model throughput_model "benchmarks/throughput_model.py is not in this checkout"
else
    throughput_help=$(timeout 120 "$PY" benchmarks/throughput_model.py --help 2>&1)
    throughput_args=()
    if grep -q -- '--device' <<<"$throughput_help"; then
        throughput_args+=(--device "$DEVICE")
    else
        note "throughput_model.py has no --device option: it measures on its default device"
    fi
    grep -q -- '--scratch' <<<"$throughput_help" && throughput_args+=(--scratch "$SCRATCH/throughput_model")
    # Its JSON (--out) stays in $SCRATCH: the device tool brings back 8 files, and the log holds the table.
    grep -q -- '--out' <<<"$throughput_help" && throughput_args+=(--out "$SCRATCH/throughput_model.json")
    if ((DRY_RUN)); then
        grep -q -- '--quick' <<<"$throughput_help" && throughput_args+=(--quick)
    elif [[ ! -f $SHARED_DIR/$HC18/dataset.json ]] && grep -q -- '--quick' <<<"$throughput_help"; then
        throughput_args+=(--quick)
        note "throughput_model.py --quick (2 Hippocampus configurations, 2 iterations): its full list needs $HC18"
    fi
    run_step throughput_model throughput_model throughput_model "$PY" benchmarks/throughput_model.py \
        "${throughput_args[@]}"
fi

# ----------------------------------------------------------------------------------------------------------------
# Steps train_auto, train_float32: `autoseg train` seconds per iteration, mixed precision against float32.
# ----------------------------------------------------------------------------------------------------------------
train_one() {  # train_one PRECISION TRAIN_ARGS...: a fresh fold 0; its log.jsonl kept as train_PRECISION.jsonl
    local precision=$1 fold=$MODEL/models/$CONFIGURATION/fold_0
    shift
    rm -rf "$fold"
    "$PY" -m autoseg train "$DATA_ROOT" "$CONFIGURATION" 0 --work-dir "$WORK" --device "$DEVICE" \
        --precision "$precision" --validation-iterations 0 --no-validation-prediction "$@" || return 1
    cp "$fold/log.jsonl" "$SCRATCH/train_$precision.jsonl"
}
export -f train_one
export DATA_ROOT MODEL DEVICE

train_table() {
    "$PY" - "$SCRATCH" "$MODEL/plans.json" "$CONFIGURATION" "$DEVICE" "${TRAIN_BATCH:-}" \
        >"$SCRATCH/train_table.md" 2>>"$OUT/autoseg_speed.log" <<'EOF'
import json, sys
from pathlib import Path
scratch, plans, configuration, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
plan = json.loads(plans.read_text())["configurations"][configuration] if plans.is_file() else {}
batch = sys.argv[5] or plan.get("batch_size", "?")
try:
    import torch
    from autoseg.utils.precision import resolve_precision
    shown = {"auto": f"auto = {resolve_precision('auto', torch.device(device))}"}
except Exception:
    shown = {}
print("| precision | patch | batch | timed iterations (epoch 1 not counted) | s/it | it/s | data wait share |")
print("|---|---|---|---|---|---|---|")
seconds_per_iteration = {}
for precision in ("auto", "float32"):
    log = scratch / f"train_{precision}.jsonl"
    if not log.is_file():
        continue
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    timed = records[1:] or records
    iterations = sum(r["iterations"] for r in timed)
    seconds = sum(r["train_seconds"] for r in timed)
    wait = sum(r.get("data_wait_seconds", 0.0) for r in timed)
    seconds_per_iteration[precision] = seconds / iterations
    print(f"| {shown.get(precision, precision)} | {'x'.join(map(str, plan.get('patch_size', [])))} | "
          f"{batch} | {iterations} | {seconds / iterations:.4f} | {iterations / seconds:.2f} | "
          f"{wait / seconds:.0%} |")
if len(seconds_per_iteration) == 2:
    ratio = seconds_per_iteration["float32"] / seconds_per_iteration["auto"]
    print(f"\nauto precision gives {ratio:.2f}x the iterations per second of float32.")
EOF
}

TRAIN_BATCH=""
if ((DRY_RUN)); then TRAIN_BATCH=2; fi
if wanted train && ((DATA_OK == 0)) && [[ $DATASET_LABEL == "$HIPPOCAMPUS"* && -f $FULL_PLAN ]]; then
    full=$(plan_line "$FULL_PLAN")
    here=$(plan_line "$MODEL/plans.json")
    if [[ -n $full && $full != "$here" ]] && ((DRY_RUN)); then
        note "the whole dataset's plan ($full, $FULL_PLAN) differs from the subset's ($here); a dry run keeps batch 2"
    elif [[ -n $full && $full != "$here" ]]; then
        TRAIN_BATCH=${full##* }
        TRAIN_ARGS+=(--batch-size "$TRAIN_BATCH")
        note "training with the whole dataset's batch ($full, from $FULL_PLAN); the subset's own plan: $here"
    fi
fi
if wanted train; then
    if ((DATA_OK != 0)); then
        skip train_auto autoseg_speed "the data step failed"
        skip train_float32 autoseg_speed "the data step failed"
    else
        run_step train_auto autoseg_speed train_auto train_one auto "${TRAIN_ARGS[@]}"
        run_step train_float32 autoseg_speed train_float32 train_one float32 "${TRAIN_ARGS[@]}"
        train_table
        write_summary
    fi
fi

# ----------------------------------------------------------------------------------------------------------------
# Step predict: `autoseg predict` seconds per case with the checkpoint just trained (start-up included).
# ----------------------------------------------------------------------------------------------------------------
predict_once() {  # predict_once LABEL EXTRA...: one timed `autoseg predict` of the linked cases
    local label=$1 started seconds cases
    shift
    cases=$(find "$SCRATCH/predict_in" -name '*.nii.gz' | wc -l)
    rm -rf "$SCRATCH/predict_out"
    started=$(date +%s%N)
    "$PY" -m autoseg predict -i "$SCRATCH/predict_in" -o "$SCRATCH/predict_out" -m "$MODEL" -c "$CONFIGURATION" \
        -f 0 --device "$DEVICE" "$@" || return 1
    seconds=$(awk -v n="$(($(date +%s%N) - started))" 'BEGIN {printf "%.2f", n / 1e9}')
    echo "| $label | $cases | $seconds | $(awk -v s="$seconds" -v c="$cases" 'BEGIN {printf "%.3f", s / c}') |" \
        >>"$SCRATCH/predict_table.md"
}

predict_all() {
    local image
    rm -rf "$SCRATCH/predict_in"
    mkdir -p "$SCRATCH/predict_in"
    while read -r image; do ln -s "$image" "$SCRATCH/predict_in/"; done \
        < <(find "$DATA_ROOT/imagesTr" -name '*_0000.nii.gz' | sort | head -n "$PREDICT_CASES")
    printf '| command (device %s, default precision) | cases | wall s | s/case |\n|---|---|---|---|\n' "$DEVICE" \
        >"$SCRATCH/predict_table.md"
    predict_once "autoseg predict --no-tta" --no-tta || return 1
    predict_once "autoseg predict (mirroring TTA)"
}
export -f predict_once predict_all
export PREDICT_CASES

if ! wanted predict; then
    :
elif [[ ! -f $MODEL/models/$CONFIGURATION/fold_0/checkpoint_final.pt ]]; then
    skip predict autoseg_speed "no fold 0 checkpoint (the train steps did not run or finish)"
else
    run_step predict autoseg_speed predict predict_all
fi

# ----------------------------------------------------------------------------------------------------------------
# Steps nnunet_*: train_speed.py / predict_speed.py need nnU-Net v2 in a virtual environment (no network there).
# ----------------------------------------------------------------------------------------------------------------
if wanted nnunet; then
    NNUNET_VENV=""
    for candidate in ${NNUNET_VENV_ARG:+"$NNUNET_VENV_ARG"} "$(dirname "$(dirname "$PY")")" \
        "${NNUNET_PEER_VENV:-$TEMPORARY/nnunet-peer/venv}"; do
        if [[ -x $candidate/bin/nnUNetv2_predict && -x $candidate/bin/python ]] \
            && "$candidate/bin/python" -c "import nnunetv2" 2>/dev/null; then
            NNUNET_VENV=$candidate
            break
        fi
    done
    if [[ -z $NNUNET_VENV ]]; then
        reason="nnU-Net not installable offline (nnunetv2 not importable here)"
        reason+=", and train_speed.py / predict_speed.py have no autoseg-only part"
        skip nnunet_train_speed nnunet "$reason"
        skip nnunet_predict_speed nnunet "$reason"
    elif ((DRY_RUN)); then
        reason="nnU-Net found in $NNUNET_VENV, but a dry run does not start its CPU-heavy preprocessing"
        skip nnunet_train_speed nnunet "$reason"
        skip nnunet_predict_speed nnunet "$reason"
    else
        note "nnU-Net v2 found in $NNUNET_VENV; train_speed.py and predict_speed.py compare on the CPU ($(nproc) cores)"
        run_step nnunet_train_speed nnunet nnunet "$PY" benchmarks/train_speed.py --datasets "$HIPPOCAMPUS" \
            --warmup 2 --iterations 6 --nnunet-venv "$NNUNET_VENV" --scratch "$SCRATCH/nnunet_scratch"
        run_step nnunet_predict_speed nnunet nnunet "$PY" benchmarks/predict_speed.py --cases 5 --rounds 1 \
            --nnunet-venv "$NNUNET_VENV" --scratch "$SCRATCH/nnunet_scratch"
    fi
fi

# ----------------------------------------------------------------------------------------------------------------
file_count=$(find "$OUT" -maxdepth 3 -type f | wc -l)
((file_count > 8)) && note "$OUT holds $file_count files: the device tool brings back at most 8"
write_summary
echo
cat "$OUT/summary.md"
((DRY_RUN)) && rm -rf "$SCRATCH"
exit "$FAILED"
