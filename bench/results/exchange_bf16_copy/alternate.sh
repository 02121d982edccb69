#!/bin/bash
# alternate.sh N NP (OLD, OLDFIX, NEW: three bench_dispatch binaries in the environment): N
# alternations of the three at NP ranks, one line per binary and row type.
N=$1; NP=$2
for i in $(seq $N); do for X in $OLD $OLDFIX $NEW; do
 mpirun --allow-run-as-root --oversubscribe -np $NP $X --tokens 256 --hidden 1024 --top-k 4 --experts 64 --iters 30 --dtype fp32,bf16 2>&1 | grep -E "^ +256" | awk -F'|' -v n=$(basename $X) '{split($1,h," "); split($2,a," "); split($3,b," "); split($5,m," "); split($6,r," "); split($7,d," "); printf "%-13s %s ours %7.1f raw %7.1f mem %5.1f res %5.1f  /raw %.3f /(r+m) %.3f /(r+m+x) %.3f disp %7.1f comb %7.1f #wrong %s\n", n, h[6], a[1], b[1], m[1], r[1], a[1]/b[1], m[2], r[2], d[1], d[2], a[4]}'
done; done
