#!/usr/bin/env bash
# The classification demo behind `make demo-classify`: prepare the shipped AG News rows (news
# topics: World, Sports, Business, Sci/Tech), train configs/ag_news.yaml on this machine for
# CLASSIFY_MINUTES (at most 15 by default), average the last checkpoints, evaluate on a held-out
# fold (accuracy, macro-F1, confusion matrix), classify a few headlines, draw the encoder's
# attention, and print a summary. Re-running it resumes or reuses what is already there.
set -euo pipefail

BIN=${BIN:-.venv/bin}
MINUTES=${CLASSIFY_MINUTES:-15}
DATA=${CLASSIFY_DATA:-work/ag_news}
RUN=${CLASSIFY_RUN:-runs/ag_news}
MODEL=$RUN/model
T=$BIN/transformer
started=$(date +%s)

step() { printf '\n==> %s\n' "$*"; }

step "1/6 prepare: BPE (8,000) and binarized AG News rows in $DATA (10 stratified folds: 0 valid, 1 test)"
if [ -f "$DATA/manifest.json" ]; then
    echo "already prepared (delete $DATA to redo)"
else
    $T prepare --classify --train data/ag_news/train_head.csv.gz --text-columns 1,2 \
        --label-column 0 --classes data/ag_news/classes.txt --vocab-size 8000 \
        --folds 10 --valid-fold 0 --test-fold 1 --out "$DATA"
fi

step "2/6 train: configs/ag_news.yaml for at most $MINUTES minutes (CLASSIFY_MINUTES=N) in $RUN"
$T train configs/ag_news.yaml --run-dir "$RUN" --set data.dir="$DATA" \
    --set train.max_minutes="$MINUTES"

step "3/6 average the last 5 checkpoints into $MODEL; plot the training curves"
$T average "$RUN" --last 5 --out "$MODEL"
$T plot "$RUN" >/dev/null && echo "$RUN/plots/curves.png"

step "4/6 evaluate on the held-out test fold (never seen in training or validation)"
$T evaluate --model "$MODEL" --src "$DATA/test.src.txt" --ref "$DATA/test.tgt.txt" \
    --confusion "$RUN/confusion.png" --output "$RUN/test.predicted" | tee "$RUN/test.txt"
$T evaluate --model "$MODEL" --src "$DATA/test.src.txt" --ref "$DATA/test.tgt.txt" \
    --confusion "$RUN/confusion.png" --json > "$RUN/test.json"

step "5/6 classify a few headlines (transformer classify is a Unix filter: label, probability)"
printf '%s\n' "Stocks fall as oil prices climb to a record high" \
    "Striker scores twice as champions win the derby" \
    "New chip promises faster laptops with longer battery life" \
    "Rebels and government sign a ceasefire after talks in the capital" > "$RUN/headlines.txt"
$T classify --model "$MODEL" --top-k 2 < "$RUN/headlines.txt" > "$RUN/headlines.classified"
paste "$RUN/headlines.classified" "$RUN/headlines.txt" | awk -F'\t' \
    '{ printf "  %-9s %5.1f%%  (then %s %4.1f%%)  %s\n", $1, 100 * $2, $3, 100 * $4, $5 }'

step "6/6 look inside: the encoder's attention over a headline (transformer visualize)"
$T visualize --model "$MODEL" --text "Stocks fall as oil prices climb to a record high" \
    --out "$RUN/attention" | tail -n 2

step "summary"
$BIN/python - "$RUN" "$MODEL" "$started" "$BIN" <<'PY'
import json, sys, time
from pathlib import Path
run, model, started = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if l.strip()]
valid = [r for r in rows if r["kind"] == "valid"]
test = json.loads((run / "test.json").read_text())
last = max(rows, key=lambda r: r["step"]) if rows else {}
epochs = max((r["epoch"] for r in rows if r["kind"] == "train"), default=0)
print(f"trained      {last.get('step', 0)} updates, {epochs} epoch(s), "
      f"{last.get('train_minutes', 0):.1f} min")
if valid:
    best = max(valid, key=lambda r: r["accuracy"])
    print(f"validation   accuracy {valid[-1]['accuracy']:.2f}% (best {best['accuracy']:.2f}% at "
          f"update {best['step']}), macro-F1 {valid[-1]['macro_f1']:.2f}%")
print(f"test fold    accuracy {100 * test['accuracy']:.2f}%, macro-F1 {100 * test['macro_f1']:.2f}% "
      f"on {test['count']} texts (averaged model); {test['texts_per_second']:.0f} texts/s")
print(f"confusion    {run}/confusion.png")
print(f"curves       {run}/plots/curves.png")
print(f"attention    {run}/attention/*.png")
print(f"model        {model}  (transformer classify --model {model})")
print(f"serve it     {sys.argv[4]}/transformer serve --model {model}   (then open http://127.0.0.1:8000/)")
print(f"demo took    {(time.time() - started) / 60:.1f} min")
PY
