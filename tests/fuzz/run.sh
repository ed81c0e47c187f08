#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/ with clang in their own build
# directory and runs each for a bounded time on a copy of its seed corpus
# (so a run never grows the repository). Prints one line per target and
# exits non-zero if any target found a crash, a leak, a timeout or a broken
# invariant; the input is kept under the build directory's artifacts/.
#
#   tests/fuzz/run.sh [SECONDS]    SECONDS per target, default 20
#
# Environment: SY_FUZZ_BUILD_DIR (default build-fuzz), SY_FUZZ_TARGETS (a
# space-separated subset of: workflow rate vars jsonl), SY_FUZZ_ARGS (more
# libFuzzer flags, e.g. -jobs=2).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
secs=${1:-20}
case $secs in
  '' | *[!0-9]*) echo "usage: tests/fuzz/run.sh [SECONDS]" >&2; exit 2 ;;
esac
build=${SY_FUZZ_BUILD_DIR:-$root/build-fuzz}
read -ra targets <<<"${SY_FUZZ_TARGETS:-workflow rate vars jsonl}"
read -ra extra <<<"${SY_FUZZ_ARGS:-}"

# --- Tools: the project's packages, clang and its libFuzzer runtime.
scripts/setup
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'
}
if ! command -v clang >/dev/null; then
  echo "fuzz: installing clang" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
    --no-install-recommends clang
fi
# Debian ships libFuzzer (and the sanitizer runtimes) in libclang-rt-N-dev,
# N being clang's major version.
clang_major=$(clang -dumpversion | cut -d. -f1)
if command -v dpkg-query >/dev/null && ! installed "libclang-rt-$clang_major-dev"; then
  echo "fuzz: installing libclang-rt-$clang_major-dev" >&2
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q \
    --no-install-recommends "libclang-rt-$clang_major-dev"
fi

# --- The engine and the plugin as static libraries, instrumented for
# coverage (fuzzer-no-link) so libFuzzer sees inside them, with ASan and
# UBSan. The engine's vprintf-style helpers lack format attributes, which
# clang's -Wformat-nonliteral (from -Wformat=2) reports and gcc does not:
# keep those warnings visible but not fatal, every other warning stays an
# error.
mkdir -p "$build"
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Debug \
  -DSY_SANITIZE=ON -DBUILD_TESTING=OFF \
  "-DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link -Wno-error=format-nonliteral" \
  >"$build/configure.log" 2>&1 || { cat "$build/configure.log" >&2; exit 1; }
if ! cmake --build "$build" -j "$(nproc)" --target syengine cvplugin cvcore \
  curlloop \
  >"$build/libs.log" 2>&1; then
  cat "$build/libs.log" >&2
  echo "fuzz: the libraries do not build with clang" >&2
  exit 1
fi
grep -E 'warning:' "$build/libs.log" >&2 || true

# --- The targets.
deps=(lua5.4 libuv sqlite3 libpq jansson libcrypto libcurl)
read -ra dep_cflags <<<"$(pkg-config --cflags "${deps[@]}")"
read -ra dep_libs <<<"$(pkg-config --libs "${deps[@]}")"
out=$build/fuzz
mkdir -p "$out"
for t in "${targets[@]}"; do
  [ -f "tests/fuzz/fuzz_$t.c" ] || { echo "fuzz: no target '$t'" >&2; exit 2; }
  clang -std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -fno-omit-frame-pointer \
    -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes \
    -Wmissing-prototypes -Wformat=2 -Werror \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Iengine -Iengine/include -Iplugins/choose_version \
    "${dep_cflags[@]}" \
    "tests/fuzz/fuzz_$t.c" -o "$out/fuzz_$t" \
    -Wl,--start-group "$build/libsyengine.a" "$build/plugins/libcvplugin.a" \
    "$build/plugins/libcvcore.a" "$build/plugins/libcurlloop.a" \
    -Wl,--end-group \
    "${dep_libs[@]}" -lm
done

# --- The runs, one after the other, each on a fresh copy of its corpus.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in "${targets[@]}"; do
  corpus=$out/corpus/$t
  artifacts=$out/artifacts/$t
  log=$out/fuzz_$t.log
  rm -rf "$corpus"
  mkdir -p "$corpus" "$artifacts"
  cp -R "tests/fuzz/corpus/$t/." "$corpus/"
  seeds=$(find "$corpus" -type f | wc -l)
  dict=()
  [ -f "tests/fuzz/$t.dict" ] && dict=("-dict=tests/fuzz/$t.dict")
  rc=0
  "$out/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" \
    "${extra[@]}" "$corpus" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  if [ "$rc" -eq 0 ]; then
    verdict=ok
  else
    status=1
    verdict="FAILED (exit $rc): $(grep -m1 -E 'ERROR: |invariant broken|deadly signal|Test unit written' "$log" || echo "see $log")"
  fi
  printf 'fuzz_%-8s %s: %s execs in %ss, cov %s, ft %s, corpus %s (from %s seeds)\n' \
    "$t" "$verdict" "${execs:-?}" "$secs" "${cov:-?}" "${ft:-?}" \
    "${corp:-?}" "$seeds"
  if [ "$rc" -ne 0 ]; then
    grep -E 'Test unit written|invariant broken' "$log" >&2 || true
    echo "  log: $log" >&2
  fi
done
exit $status
