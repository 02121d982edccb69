#!/bin/sh
# expect_job_failure.sh PATTERN COMMAND...: passes when COMMAND (an mpirun job) exits non-zero and
# its output matches the extended regex PATTERN. ctest's timeout bounds how long it may take.
pattern=$1
shift
out=$("$@" 2>&1)
rc=$?
printf '%s\n' "$out"
if [ "$rc" -eq 0 ]; then
  echo "FAIL: expected the job to fail, but it exited 0"
  exit 1
fi
if ! printf '%s\n' "$out" | grep -E -q "$pattern"; then
  echo "FAIL: the job failed (exit $rc) but its output lacks: $pattern"
  exit 1
fi
echo "PASS: the job failed as expected (exit $rc)"
