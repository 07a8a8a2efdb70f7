#!/usr/bin/env bash
# Constituency parsing as translation on the GUM treebank (behind `make parsing`): linearise the
# trees, train configs/gum-parsing.yaml for PARSE_MINUTES, average the last checkpoints, and score
# GUM dev, test and test2 (out of domain) with labeled bracket F1 in the EVALB convention: the
# paper's parsing decoding (beam 21, alpha 0.3, input + 300, the model's defaults), the same model
# decoded greedily, and the right-branching baseline, on the same sentences. Writes the table to
# $RUN/parsing.md. Re-running it resumes the training and reuses every finished evaluation.
set -euo pipefail

BIN=${BIN:-.venv/bin}
MINUTES=${PARSE_MINUTES:-60}
GUM=${GUM:-data/gum}
DATA=${PARSE_DATA:-work/gum}
RUN=${PARSE_RUN:-runs/gum}
SPLITS=${PARSE_SPLITS:-dev test test2}
MODEL=$RUN/model
T=$BIN/transformer

step() { printf '\n==> %s\n' "$*"; }

step "1/4 prepare: GUM trees -> (sentence, linearised tree) pairs, joint BPE (4,000) in $DATA"
if [ -f "$DATA/manifest.json" ]; then
    echo "already prepared (delete $DATA to redo)"
else
    $T prepare --trees --train "$GUM/train.trees.gz" --valid "$GUM/dev.trees.gz" \
        --test "$GUM/test.trees.gz" --test "$GUM/test2.trees.gz" --vocab-size 4000 --out "$DATA"
fi

step "2/4 train: configs/gum-parsing.yaml for $MINUTES minutes in $RUN"
$T train configs/gum-parsing.yaml --run-dir "$RUN" --set data.dir="$DATA" \
    --set train.max_minutes="$MINUTES"

step "3/4 average the last 5 checkpoints into $MODEL"
newest=$(ls -d "$RUN"/checkpoints/step_* | tail -n 1)
if [ -f "$MODEL/model.safetensors" ] && [ "$MODEL/model.safetensors" -nt "$newest" ]; then
    echo "already averaged (newer than $newest)"
else
    $T average "$RUN" --last 5 --out "$MODEL"
fi
# Scores belong to one model: those of another (an older average) are set aside, not reused.
sum=$(sha256sum "$MODEL/model.safetensors" | cut -d' ' -f1)
if [ -d "$RUN/eval" ] && [ "$(cat "$RUN/eval/model.sha256" 2>/dev/null)" != "$sum" ]; then
    mv "$RUN/eval" "$RUN/eval.$(date +%Y%m%d-%H%M%S)"
fi
mkdir -p "$RUN/eval"
echo "$sum" > "$RUN/eval/model.sha256"

step "4/4 bracket F1 on $SPLITS: beam 21 (the model's default) and greedy"
for split in $SPLITS; do
    for how in beam greedy; do
        out="$RUN/eval/$split-$how.json"
        if [ -f "$out" ]; then echo "$out: done"; continue; fi
        extra=()
        [ "$how" = greedy ] && extra=(--greedy)
        $T evaluate --model "$MODEL" --ref "$GUM/$split.trees.gz" "${extra[@]}" \
            --output "$RUN/eval/$split-$how.trees" --json > "$out.tmp"
        mv "$out.tmp" "$out"
        echo "$out: F1 $($BIN/python -c "import json,sys; print(json.load(open(sys.argv[1]))['f1'])" "$out")"
    done
done

$BIN/python - "$RUN" $SPLITS <<'PY'
import json, sys
from pathlib import Path
run, splits = Path(sys.argv[1]), sys.argv[2:]
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
last = max(rows, key=lambda r: r["step"])
lines = [
    f"GUM constituency parsing, {last['step']} updates ({last['train_minutes']:.0f} min of "
    "training), averaged last 5 checkpoints; labeled bracket F1 (EVALB convention, COLLINS.prm).",
    "",
    "| split | sentences | F1 beam 21 | P | R | exact | well-formed | F1 greedy | "
    "right-branching F1 (unlabeled) | beam sentences/s |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
]
for split in splits:
    b = json.loads((run / "eval" / f"{split}-beam.json").read_text())
    g = json.loads((run / "eval" / f"{split}-greedy.json").read_text())
    rb = b["right_branching"]
    lines.append(
        f"| {split} | {b['sentences']:,} | **{b['f1']:.2f}** | {b['precision']:.2f} | "
        f"{b['recall']:.2f} | {b['exact_match']:.1f}% | {b['well_formed']:.1f}% | {g['f1']:.2f} | "
        f"{rb['f1']:.2f} ({rb['unlabeled_f1']:.2f}) | {b['sentences_per_second']:.1f} |"
    )
(run / "parsing.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
