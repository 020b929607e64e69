#!/usr/bin/env bash
# A demo data folder of 10 runs on the default model, for the README's screenshots and page
# timings: two training runs (one distance; three distances with gates), a two-point sweep (its
# two training runs and the sweep itself), a capture and its analysis, and three dose runs (a
# prompts file of three prompts, one prompt, one prompt on the trained run). About 20 minutes on two busy CPU cores.
#
#   bash scripts/demo_data.sh DIR     # then: PSILONET_DATA=DIR python -m bench.app_pages
#
# DIR gets symlinks to ./data/models and ./data/corpora (the converted model and the corpora).
set -euo pipefail
D=${1:?usage: bash scripts/demo_data.sh DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"
mkdir -p "$D"
D=$(cd "$D" && pwd)
for sub in models corpora; do [ -e "$D/$sub" ] || ln -s "$(readlink -f "$ROOT/data/$sub")" "$D/$sub"; done
cd "$ROOT"
newest() { "$PY" -c "from psilonet.store import Store; print(Store('$D').list_runs(kind='$1').run_id.iloc[0])"; }
oldest() { "$PY" -c "from psilonet.store import Store; print(Store('$D').list_runs(kind='$1').run_id.iloc[-1])"; }
"$PY" -m jobs.train --dataset smol-stories --train-samples 40 --val-samples 16 --epochs 1 --distances 3 --alpha 0.65 --data-dir "$D"
"$PY" -m jobs.train --dataset smol-stories --train-samples 40 --val-samples 16 --epochs 1 --distances 1 2 4 --gates --alpha 0.5 --data-dir "$D"
TRAIN=$(oldest train)  # the one-distance run: captured and analysed
"$PY" -m jobs.sweep --dataset smol-stories --train-samples 16 --val-samples 8 --epochs 1 --distances 3 --alphas 0.3 0.65 --seeds 0 --data-dir "$D"
"$PY" -m jobs.capture --run "$TRAIN" --samples 8 --max-tokens 64 --data-dir "$D"
"$PY" -m jobs.analyze --captures "$(newest capture)" --data-dir "$D"
printf '%s\n' '{"prompt": "The nature of consciousness is"}' '{"prompt": "Once upon a time, in a quiet village,"}' \
  '{"prompt": "The best way to learn a new language is"}' > "$D/demo_prompts.jsonl"
"$PY" -m jobs.dose --prompts-file "$D/demo_prompts.jsonl" --intensities 0 0.1 0.2 0.3 --max-tokens 32 --data-dir "$D"
"$PY" -m jobs.dose --prompt "The nature of consciousness is" --intensities 0 0.1 0.2 0.3 --max-tokens 48 --data-dir "$D"
"$PY" -m jobs.dose --run "$TRAIN" --prompt "The nature of consciousness is" --intensities 0 0.2 --max-tokens 32 --data-dir "$D"
"$PY" -c "from psilonet.store import Store; r = Store('$D').list_runs(); print(len(r), 'runs'); print(r[['run_id', 'kind', 'state']].to_string())"
