#!/usr/bin/env bash
# Checks of the C ABI and its bindings, runnable on its own after `cargo build`:
#  - include/dpoimg.h is what cbindgen generates from src/ffi/ (a build regenerates it; a diff
#    against the committed header fails), and it compiles as strict C99/C11 and as C++;
#  - the header's own example compiles and runs;
#  - the C tests in tests/c/ (version, errors, panic boundary, generate, concurrency, adapters and
#    log) pass, natively and under valgrind with no leak and no invalid access;
#  - the C generate test's pixels equal those of `dpoimg generate` with the same settings;
#  - libdpoimg.a links statically; scripts/install.sh installs a prefix that pkg-config finds,
#    with ONNX Runtime beside the library;
#  - the Swift package's module map imports with clang; the Go binding passes `go test -race`.
# Prints one line per check and ends with "N passed, M failed" (", K skipped").
#
# Environment: DPOIMG_TEST_C_VALGRIND=0 skips valgrind; DPOIMG_TEST_C_GO=0 skips Go;
# DPOIMG_TEST_C_INSTALL_TOOLS=0 never runs apt-get (go, clang and pkg-config are installed when
# missing otherwise).
set -uo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0 failed=0 skipped=0
pass() { echo "PASS  $1"; passed=$((passed + 1)); }
fail() { echo "FAIL  $1"; failed=$((failed + 1)); }
skip() { echo "SKIP  $1 ($2)"; skipped=$((skipped + 1)); }
# check NAME COMMAND...: runs the command with its output in $work/NAME.log, shown on failure.
check() {
    local name="$1"
    shift
    if "$@" >"$work/$name.log" 2>&1; then
        pass "$name"
    else
        fail "$name"
        tail -n 40 "$work/$name.log" | sed 's/^/      /'
    fi
}
finish() {
    local line="$passed passed, $failed failed"
    [ "$skipped" -gt 0 ] && line="$line, $skipped skipped"
    echo "$line"
    [ "$failed" -eq 0 ]
    exit $?
}

apt_install() { # apt_install PACKAGE... (only where allowed and possible)
    [ "${DPOIMG_TEST_C_INSTALL_TOOLS:-1}" = 1 ] && command -v apt-get >/dev/null || return 1
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } \
        >"$work/apt.log" 2>&1
}

# --- Build (regenerates include/dpoimg.h through build.rs) -------------------------------------
check cargo-build cargo build --lib --bin dpoimg
lib="$root/target/debug"
if [ ! -f "$lib/libdpoimg.so" ] || [ ! -x "$lib/dpoimg" ]; then
    echo "libdpoimg.so or dpoimg missing in $lib; stopping"
    finish
fi
export DPOIMG_TEST_BUNDLE="$root/tests/assets/tiny-bundle"
export RUST_BACKTRACE=0

# --- The header ----------------------------------------------------------------------------------
if git ls-files --error-unmatch include/dpoimg.h >/dev/null 2>&1; then
    check header-matches-generated git diff --exit-code -- include/dpoimg.h
else
    skip header-matches-generated "include/dpoimg.h is not committed yet"
fi
cc_strict=(cc -Wall -Wextra -Werror -pedantic -Iinclude)
check header-c99 "${cc_strict[@]}" -std=c99 -fsyntax-only -x c include/dpoimg.h
check header-c11 "${cc_strict[@]}" -std=c11 -fsyntax-only -x c include/dpoimg.h
if command -v c++ >/dev/null; then
    check header-cxx c++ -Wall -Wextra -Werror -pedantic -std=c++11 -Iinclude -fsyntax-only -x c++ include/dpoimg.h
else
    skip header-cxx "no C++ compiler"
fi
# The usage example at the top of the header, extracted, compiled and run on the shipped bundle.
sed -n '/^ \* Example/,/^ \* Build:/p' include/dpoimg.h | sed -n 's/^ \*     //p' >"$work/example.c"
header_example() {
    "${cc_strict[@]}" -std=c11 -o "$work/example" "$work/example.c" -L"$lib" -Wl,-rpath,"$lib" -ldpoimg &&
        mkdir -p "$work/ex" && ln -sfn "$root/models" "$work/ex/models" &&
        (cd "$work/ex" && "$work/example") && test -s "$work/ex/out.png"
}
check header-example header_example

# --- C tests -------------------------------------------------------------------------------------
tests=(version errors panic generate concurrency adapters_log finetune score)
build_test() { "${cc_strict[@]}" -std=c11 -o "$work/$1" "tests/c/$1.c" -L"$lib" -Wl,-rpath,"$lib" -ldpoimg -lpthread -lm; }
for t in "${tests[@]}"; do check "compile-$t" build_test "$t"; done

# The reference image: the command-line tool with the settings of tests/c/generate.c.
mkdir -p "$work/ref"
check cli-reference-png "$lib/dpoimg" generate "a red circle above a blue square" \
    --bundle "$DPOIMG_TEST_BUNDLE" --negative-prompt blurry --seed 42 --steps 4 --sampler euler-a \
    --adapter tests/assets/adapters/r4.safetensors:0.5 --device cpu --threads 1 --quiet -o "$work/ref"
ref="$work/ref/dpoimg-42-0.png"
# The reference score of that image, for tests/c/score.c.
ref_score="$("$lib/dpoimg" score --reward tests/assets/reward-tiny --device cpu --threads 1 --json \
    "a red circle above a blue square" "$ref" | sed -n 's/^ *"mean": \(.*\),$/\1/p')"

run_test() { # run_test NAME [launcher...]: the test binary with its arguments
    local t="$1"
    shift
    case "$t" in
        generate) "$@" "$work/generate" "$work/c-generate.png" "$ref" ;;
        score) "$@" "$work/score" "$ref_score" ;;
        *) "$@" "$work/$t" ;;
    esac
}
for t in "${tests[@]}"; do check "run-$t" run_test "$t"; done
# Same settings, same pixels, and the same provenance: the whole files are equal.
check generate-png-equals-cli cmp "$work/c-generate.png" "$ref"

# --- Static library ------------------------------------------------------------------------------
static_link() {
    "${cc_strict[@]}" -std=c11 -o "$work/generate-static" tests/c/generate.c "$lib/libdpoimg.a" \
        -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc &&
        ! ldd "$work/generate-static" | grep -q libdpoimg &&
        "$work/generate-static" "$work/static.png" "$ref"
}
check static-link-generate static_link

# --- Valgrind ------------------------------------------------------------------------------------
if [ "${DPOIMG_TEST_C_VALGRIND:-1}" != 1 ]; then
    skip valgrind "DPOIMG_TEST_C_VALGRIND=0"
elif ! command -v valgrind >/dev/null; then
    skip valgrind "valgrind not installed"
else
    vg=(valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect,possible
        --errors-for-leak-kinds=definite,indirect,possible --num-callers=40 --error-exitcode=99
        --suppressions="$root/tests/c/valgrind.supp")
    vg_test() { run_test "$1" "${vg[@]}" --log-file="$work/vg-$1.txt"; }
    # Valgrind runs a process on one core at a time: run two tests at once, report in order.
    for t in "${tests[@]}"; do
        (
            vg_test "$t" >"$work/valgrind-$t.log" 2>&1
            echo $? >"$work/valgrind-$t.rc"
        ) &
        while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done
    done
    wait
    for t in "${tests[@]}"; do
        if [ "$(cat "$work/valgrind-$t.rc" 2>/dev/null)" = 0 ]; then
            pass "valgrind-$t"
        else
            fail "valgrind-$t"
            tail -n 40 "$work/valgrind-$t.log" | sed 's/^/      /'
        fi
        # The numbers, for the record (ERROR SUMMARY counts invalid accesses and leaks).
        if [ -f "$work/vg-$t.txt" ]; then
            summary="$(grep -h 'ERROR SUMMARY' "$work/vg-$t.txt" | tail -n1 | sed 's/^==[0-9]*== //')"
            leaks="$(grep -hE 'definitely lost:|indirectly lost:|possibly lost:' "$work/vg-$t.txt" |
                sed 's/^==[0-9]*== *//' | tr -s ' ' | paste -sd ';' -)"
            echo "      $summary ${leaks:-(no leaks: all heap blocks freed)}"
            grep -q 'ERROR SUMMARY: 0 errors' "$work/vg-$t.txt" ||
                sed -n '/Invalid\|uninitialised\|lost in loss record\|overlap/,+12p' "$work/vg-$t.txt" | head -n 60
        fi
    done
fi

# --- Install and pkg-config ----------------------------------------------------------------------
command -v pkg-config >/dev/null || apt_install pkg-config
# A stable prefix under target/: Go's build cache keeps cgo link flags from pkg-config, so a
# prefix whose path changed every run would leave it linking against a directory that is gone.
prefix="$root/target/test-c-prefix"
rm -rf "$prefix"
check install scripts/install.sh "$prefix" --debug --no-build
if command -v pkg-config >/dev/null && [ -f "$prefix/lib/pkgconfig/dpoimg.pc" ]; then
    export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
    installed() {
        [ "$(pkg-config --modversion dpoimg)" = "$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)" ] &&
            # shellcheck disable=SC2046
            cc -std=c11 -Wall -Werror -o "$work/installed" tests/c/installed.c $(pkg-config --cflags --libs dpoimg) &&
            env -u DPOIMG_ORT_LIB -u ORT_DYLIB_PATH LD_LIBRARY_PATH="$prefix/lib" "$work/installed" "$prefix/lib"
    }
    check pkg-config-installed installed
else
    skip pkg-config-installed "pkg-config unavailable or install failed"
fi

# --- Swift: module map and header through clang's module importer --------------------------------
command -v clang >/dev/null || apt_install clang
if command -v clang >/dev/null; then
    check swift-modulemap clang -fmodules -fsyntax-only -x objective-c -Werror -Wall \
        -fmodules-cache-path="$work/clang-modules" \
        -fmodule-map-file=bindings/swift/Sources/CDpoimg/module.modulemap -Iinclude tests/c/swift_module.m
else
    skip swift-modulemap "clang unavailable"
fi

# --- Go ------------------------------------------------------------------------------------------
if [ "${DPOIMG_TEST_C_GO:-1}" != 1 ]; then
    skip go "DPOIMG_TEST_C_GO=0"
else
    command -v go >/dev/null || apt_install golang-go pkg-config
    if command -v go >/dev/null && [ -f "$prefix/lib/pkgconfig/dpoimg.pc" ]; then
        go_env=(env PKG_CONFIG_PATH="$prefix/lib/pkgconfig" LD_LIBRARY_PATH="$prefix/lib"
            GOCACHE="${GOCACHE:-$root/target/go-cache}" GOPATH="${GOPATH:-$root/target/go-path}")
        gofmt_clean() { [ -z "$(gofmt -l bindings/go)" ]; }
        check go-fmt gofmt_clean
        check go-vet sh -c 'cd bindings/go && "$@" go vet ./...' _ "${go_env[@]}"
        check go-test-race sh -c 'cd bindings/go && "$@" go test -race -count=1 ./...' _ "${go_env[@]}"
    else
        skip go "go unavailable or install failed"
    fi
fi

finish
