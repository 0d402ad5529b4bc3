#!/usr/bin/env bash
# Run a pytest command line; if it fails, end with a digest of what went wrong.
#
# CI keeps only the tail of the output.  A failure is normally there (pytest's short
# summary), but a worker that died or hit an internal error makes xdist end with its own
# INTERNALERROR traceback, and the lines naming the worker, the test and the cause are
# hundreds of lines up.  The digest repeats them last.  Exit status: pytest's.
set -uo pipefail
log=$(mktemp "${TMPDIR:-/tmp}/pytest-digest.XXXXXX")
trap 'rm -f "$log"' EXIT
"$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then  # 5: no tests collected
    echo "---- digest of the failure (pytest exit $status) ----"
    grep -n -E 'node down|crashed|IERROR|INTERNALERROR> E |^(FAILED|ERROR) |Timeout >|Fatal Python|Segmentation|Killed|MemoryError' "$log" \
        | grep -v -E 'INTERNALERROR>   File|INTERNALERROR>     ' | head -n 60
fi
exit "$status"
