#!/bin/sh
# Runs each test binary under the sanitizer settings, adds up the
# "RESULT <passed> <failed>" lines and prints "<P> passed, <F> failed".
# A binary that exits non-zero, or dies before its RESULT line (a sanitizer
# report, a crash), counts as one more failure. Each binary gets at most
# 120 s so a hang cannot stall the run.
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
passed=0
failed=0
for bin in "$@"; do
    out=$(timeout 120 "$bin")
    rc=$?
    printf '%s\n' "$out"
    result=$(printf '%s\n' "$out" | sed -n 's/^RESULT \([0-9]*\) \([0-9]*\)$/\1 \2/p')
    if [ -n "$result" ]; then
        passed=$((passed + ${result% *}))
        failed=$((failed + ${result#* }))
    fi
    if [ -z "$result" ] || { [ "$rc" -ne 0 ] && [ "${result#* }" = 0 ]; }; then
        echo "FAIL $bin (exit status $rc)"
        failed=$((failed + 1))
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
