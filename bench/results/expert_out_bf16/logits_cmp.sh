#!/usr/bin/env bash
# old vs new forward --logits-out, cmp (run from the repository root).
# Usage: bash bench/results/expert_out_bf16/logits_cmp.sh OLD_MOE_EP NEW_MOE_EP OUTDIR
set -u
OLD=$1; NEW=$2; OUT=$3; mkdir -p $OUT

TOK="1,2,3,4,5,6;7,8,9;10,11,12,13,14;15,16,17,18"
MIDTOK=$(python3 -c "import random;random.seed(3);print(';'.join(','.join(str(random.randrange(1,8000)) for _ in range(24)) for s in range(4)))")
same=0; diff=0; fail=0
one() { # name np model tokens args...
  local name=$1 np=$2 model=$3 tok=$4; shift 4
  for b in old new; do
    local bin=$OLD; [ $b = new ] && bin=$NEW
    if [ $np = 1 ]; then
      OPENBLAS_NUM_THREADS=1 $bin forward --quiet --model $model --tokens "$tok" --logits-out $OUT/$name.$b.npy "$@" >$OUT/$name.$b.log 2>&1
    else
      mpirun --allow-run-as-root --oversubscribe -np $np -x OPENBLAS_NUM_THREADS=1 $bin forward --quiet --model $model --tokens "$tok" --logits-out $OUT/$name.$b.npy "$@" >$OUT/$name.$b.log 2>&1
    fi || { echo "FAIL $name $b"; fail=$((fail+1)); }
  done
  if cmp -s $OUT/$name.old.npy $OUT/$name.new.npy; then same=$((same+1)); echo "same $name"; else diff=$((diff+1)); echo "DIFF $name"; fi
}
for m in configs/models/tiny.yaml tests/fixtures/hf/moe128 tests/fixtures/hf/fused tests/fixtures/hf/moe128_fp8; do
  mn=$(basename $m .yaml)
  for np in 1 2 4; do
    one ${mn}_n${np}_fp32 $np $m "$TOK" --compute-dtype fp32
    one ${mn}_n${np}_bf16 $np $m "$TOK" --compute-dtype bf16 --dispatch-dtype bf16
    one ${mn}_n${np}_fp8 $np $m "$TOK" --compute-dtype bf16 --dispatch-dtype fp8
  done
  one ${mn}_n2_bf16_fp32wire 2 $m "$TOK" --compute-dtype bf16 --dispatch-dtype fp32
  one ${mn}_n4_bf16_rpn2 4 $m "$TOK" --compute-dtype bf16 --dispatch-dtype bf16 --ranks-per-node 2
  one ${mn}_n4_fp8_rpn2 4 $m "$TOK" --compute-dtype bf16 --dispatch-dtype fp8 --ranks-per-node 2
  one ${mn}_n4_fp32_rpn2 4 $m "$TOK" --compute-dtype fp32 --ranks-per-node 2
  one ${mn}_n2_bf16_overlap 2 $m "$TOK" --compute-dtype bf16 --dispatch-dtype bf16 --overlap on
  one ${mn}_n2_fp8_overlap 2 $m "$TOK" --compute-dtype bf16 --dispatch-dtype fp8 --overlap on
  one ${mn}_n4_bf16_overlap 4 $m "$TOK" --compute-dtype bf16 --dispatch-dtype bf16 --overlap on
done
for np in 2 4; do
  one mid_n${np}_fp32 $np configs/models/mid.yaml "$MIDTOK" --compute-dtype fp32
  one mid_n${np}_bf16 $np configs/models/mid.yaml "$MIDTOK" --compute-dtype bf16 --dispatch-dtype bf16
  one mid_n${np}_fp8 $np configs/models/mid.yaml "$MIDTOK" --compute-dtype bf16 --dispatch-dtype fp8
done
echo "TOTAL same=$same diff=$diff fail=$fail"
