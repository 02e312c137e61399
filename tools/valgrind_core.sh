#!/usr/bin/env bash
# Run the core tests under valgrind memcheck and say whether the run was clean.
#
#   tools/valgrind_core.sh                                  # test_core.py + test_faults_core.py
#   tools/valgrind_core.sh tests/test_core.py -k segment    # any pytest arguments
#
# What runs under memcheck: pytest itself and every Python it starts directly
# (the cross-interpreter tests, the corrupt-segment fuzzer, the races, and all
# their forked children).  sh/unshare/mount and what they start run natively.
# Python runs with PYTHONMALLOC=malloc so memcheck sees every allocation;
# definite leaks count as errors.
#
# The interpreter: CPython 3.11 cannot be used.  Its _PyLong_FromByteArray
# reads the uninitialised digit of a zero-length int (int.from_bytes(b"\0..."),
# called by importlib for every .pyc) and the small-int pointer computed from
# it taints everything downstream: thousands of reports before `pass` runs,
# none of them ours.  3.12+ initialise that digit.  So by default the script
# builds (once) a venv from CPython 3.13 or 3.12 in $VALGRIND_VENV with numpy,
# cloudpickle, pytest and hypothesis, compiles the extension for it into a
# staging directory together with a copy of sharedarray/, and runs the tests
# from the repository against that copy.  The source tree is not touched.
#
# Environment:
#   PYTHON                  use this interpreter (needs numpy, pytest, hypothesis, setuptools)
#   VALGRIND_BASE_PYTHON    interpreter to make the venv from (default: newest 3.13/3.12 found)
#   VALGRIND_VENV           default /tmp/sharedarray-valgrind-venv
#   VALGRIND_LOGDIR         per-process logs (default: a new directory in /tmp)
#   SA_HYPOTHESIS_EXAMPLES  examples per property test (default here 5; normally 100)
#   SA_FUZZ_CASES           corrupt segments to try (default here 1000)
#   SA_RACE_ITERATIONS      create/delete cycles in the attach race (default here 60)
#
# Exit status: 0 when pytest passed and every process reported 0 errors.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VALGRIND_VENV:-/tmp/sharedarray-valgrind-venv}
LOGDIR=${VALGRIND_LOGDIR:-$(mktemp -d /tmp/valgrind-core.XXXXXX)}
mkdir -p "$LOGDIR"

command -v valgrind >/dev/null || { echo "valgrind is not installed" >&2; exit 2; }

find_base_python() {
    local c
    for c in "${VALGRIND_BASE_PYTHON:-}" python3.13 python3.12 \
             "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3 \
             "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3; do
        [ -n "$c" ] || continue
        if "$c" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' 2>/dev/null; then
            echo "$c"
            return 0
        fi
    done
    return 1
}

if [ -z "${PYTHON:-}" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        base=$(find_base_python) || {
            echo "need CPython >= 3.12 for a clean memcheck run (3.11 reports its own" \
                 "int.from_bytes bug everywhere); set VALGRIND_BASE_PYTHON" >&2
            exit 2
        }
        echo "creating $VENV from $base"
        "$base" -m venv "$VENV" &&
            "$VENV/bin/python" -m pip install -q numpy cloudpickle pytest hypothesis setuptools ||
            { echo "could not create $VENV" >&2; exit 2; }
    fi
    PYTHON=$VENV/bin/python
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] == (3, 11))' ||
    echo "warning: CPython 3.11 under memcheck reports its own int.from_bytes bug" >&2

# Stage: this interpreter's build of the extension + the package's Python files.
STAGE=$(mktemp -d /tmp/sharedarray-valgrind-stage.XXXXXX)
chmod 755 "$STAGE"              # the permission test drops to `nobody`
trap 'rm -rf "$STAGE"' EXIT
if ! (cd "$REPO" && "$PYTHON" setup.py -q build_ext --build-lib "$STAGE" \
        --build-temp "$STAGE/.build") >"$STAGE/build.log" 2>&1; then
    cat "$STAGE/build.log" >&2
    exit 2
fi
cp "$REPO"/sharedarray/*.py "$STAGE/sharedarray/"

if [ $# -eq 0 ]; then
    set -- tests/test_core.py tests/test_faults_core.py
fi
args=()
for a in "$@"; do                # test paths are relative to the repository
    if [ -e "$REPO/${a%%::*}" ]; then args+=("$REPO/$a"); else args+=("$a"); fi
done

export PYTHONMALLOC=malloc
export PYTHONPATH=$STAGE
export SA_HYPOTHESIS_EXAMPLES=${SA_HYPOTHESIS_EXAMPLES:-5}
export SA_FUZZ_CASES=${SA_FUZZ_CASES:-1000}
export SA_RACE_ITERATIONS=${SA_RACE_ITERATIONS:-60}

echo "valgrind: $("$PYTHON" -c 'import sys, numpy; print("Python", sys.version.split()[0], "numpy", numpy.__version__)'), logs in $LOGDIR"
cd "$STAGE" || exit 2
valgrind --tool=memcheck \
    --trace-children=yes \
    --trace-children-skip='/bin/*,/usr/bin/*,/sbin/*,/usr/sbin/*,*/sh,*/bash,*/unshare,*/mount,*/ls' \
    --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --num-callers=30 \
    --suppressions="$REPO/tools/valgrind-python.supp" \
    --error-exitcode=86 \
    --log-file="$LOGDIR/vg.%p.log" \
    "$PYTHON" -m pytest -c "$REPO/pyproject.toml" --rootdir "$REPO" \
        -p no:cacheprovider -p no:xdist -o faulthandler_timeout=0 -q "${args[@]}"
pytest_rc=$?

processes=0
dirty=()
for log in "$LOGDIR"/vg.*.log; do
    [ -e "$log" ] || continue
    n=$(sed -n 's/.*ERROR SUMMARY: \([0-9][0-9]*\) errors.*/\1/p' "$log" | tail -n 1)
    [ -n "$n" ] || continue        # exec'd into something not traced
    processes=$((processes + 1))
    [ "$n" = 0 ] || dirty+=("$log: $n errors")
done

echo
echo "valgrind: $processes processes checked, logs in $LOGDIR"
if [ ${#dirty[@]} -eq 0 ] && [ "$pytest_rc" -eq 0 ]; then
    echo "valgrind: CLEAN (0 errors, no definite leaks, pytest exit status 0)"
    exit 0
fi
[ "$pytest_rc" -eq 0 ] || echo "valgrind: pytest exit status $pytest_rc (86 = memcheck errors in pytest itself)"
for d in "${dirty[@]}"; do
    echo "valgrind: $d"
done
for d in "${dirty[@]}"; do
    log=${d%%: *}
    echo "---- $log"
    grep -A 20 -E '== (Invalid|Conditional|Use of uninit|Syscall param|Mismatched|Source and dest|[0-9,]+ bytes in [0-9,]+ blocks are definitely)' "$log" | head -n 60
done
echo "valgrind: NOT CLEAN"
exit 1
