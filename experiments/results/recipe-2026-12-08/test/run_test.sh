#!/bin/bash
# The one test evaluation of the frozen recipe (freeze commit b4ce026, cd4c337 after the rebase onto
# main). Run from the repository root.
set -e
OUT=${OUT:-/tmp/recipe/cv-test}
T=experiments/results/recipe-2026-12-08/test
/usr/bin/time -v python -m molphenix cv --data cell-injury --folds 5 --methods s2l,clip,siglip,cloome,ridge \
    --checkpoint last --out $OUT --threads 2 --no-progress > $T/cv-last.log 2> $T/cv-last.time
/usr/bin/time -v python -m molphenix cv --data cell-injury --folds 5 --methods s2l,clip,siglip,cloome,ridge \
    --checkpoint best --out $OUT --threads 2 --no-progress > $T/cv-best.log 2> $T/cv-best.time
# the soft-label ablation (s2l without soft labels) on the same folds, added to the same CV
python $T/ablation.py $OUT > $T/cv-ablation.log 2>&1
cp $OUT/cv.json $OUT/folds.parquet $OUT/results-last.json $OUT/results-best.json $OUT/report-last.md $OUT/report-best.md $T/
for m in s2l clip siglip cloome ridge s2l-nosoft; do
  for k in 0 1 2 3 4; do
    mkdir -p $T/runs/$m/fold-$k
    for f in run.json cv_fold.json train_log.csv config.json; do
      [ -f $OUT/$m/fold-$k/$f ] && cp $OUT/$m/fold-$k/$f $T/runs/$m/fold-$k/
    done
  done
done
