#!/usr/bin/env bash
# flashmem against llama.cpp on the GPU machine, same GGUF, same run: the numbers of
# docs/benchmarks.md's CUDA sections. Two halves, since the GPU machine has no network and takes
# ~64 MiB a call:
#
#   scripts/gpu-bench.sh prepare MODEL DIR   # here: DIR/lcpp.txz (llama.cpp's sources as vendored in
#                                            # llama-cpp-python 0.3.36, from PyPI, trimmed to what
#                                            # llama-bench needs: ~2.5 MB), DIR/model.gguf.xz (MODEL
#                                            # with its tensor data zeroed: speed only) and its
#                                            # tensor table, DIR/hdr (the JSON and CLI headers the
#                                            # bare GPU image lacks)
#   scripts/gpu-bench.sh build-peer DIR      # here, optional (nvcc, ~20 min on 2 cores): builds
#                                            # llama.cpp from DIR/lcpp.txz for sm_90 (SASS only,
#                                            # shared libraries) into DIR/lcpp-bin.txz, so that the
#                                            # GPU machine's time is not spent compiling it
#   scripts/gpu-bench.sh run DIR             # there: uses DIR/lcpp-bin.txz, or else builds
#                                            # llama.cpp (sm_90, in the background while flashmem
#                                            # builds and its benches run), then prints both
#                                            # engines' tables. DIR must be inside the tree
#                                            # (ignored, e.g. out/gpu) and carried.
#
# llama.cpp is a measuring stick only: it is built outside the tree and never committed.
# Environment for run: BUILD_DIR (default build-gpu), TESTS ("prefill decode batch": which rows).
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "gpu-bench: error: $*" >&2; exit 1; }
LCPP_VERSION=0.3.36

case "${1:-}" in
  prepare)
    [ $# -eq 3 ] || die "usage: prepare MODEL DIR"
    model="$2" dir="$3"
    [ -f "$model" ] || die "no model file $model"
    python3 -c "import gguf" 2>/dev/null || die "needs gguf-py (python3 -m pip install gguf)"
    mkdir -p "$dir"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LCPP_VERSION" -d "$tmp" \
      || die "could not download llama-cpp-python $LCPP_VERSION"
    tar xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
    src="$tmp/llama_cpp_python-$LCPP_VERSION/vendor/llama.cpp"
    rm -rf "$src"/{docs,models,media,tests,benches,gguf-py,conversion,scripts}
    for d in "$src"/ggml/src/ggml-*/; do
      case "$d" in *ggml-cuda/|*ggml-cpu/) ;; *) [ -f "$d/CMakeLists.txt" ] && rm -rf "$d" ;; esac
    done
    printf 'find_package(Threads REQUIRED)\nllama_add_compile_flags()\nadd_subdirectory(batched-bench)\nadd_subdirectory(llama-bench)\n' \
      > "$src/tools/CMakeLists.txt"
    find "$src/tools" -mindepth 1 -maxdepth 1 -type d ! -name batched-bench ! -name llama-bench -exec rm -rf {} +
    mv "$src" "$tmp/llama.cpp"
    tar cJf "$dir/lcpp.txz" -C "$tmp" llama.cpp
    python3 scripts/gguf-weights.py zero "$model" "$dir/model.gguf.xz" "$dir/tensors.json"
    mkdir -p "$dir/hdr"
    for h in nlohmann CLI; do
      [ -d "/usr/include/$h" ] || die "no /usr/include/$h (scripts/install-deps.sh)"
      cp -r "/usr/include/$h" "$dir/hdr/"
    done
    du -sh "$dir"/* >&2
    ;;
  build-peer)
    [ $# -eq 2 ] || die "usage: build-peer DIR"
    dir="$(cd "$2" && pwd)"
    [ -f "$dir/lcpp.txz" ] || die "no $dir/lcpp.txz (prepare first)"
    command -v nvcc > /dev/null || die "needs nvcc (the CUDA toolkit)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    tar xJf "$dir/lcpp.txz" -C "$tmp"
    # libcuda is the GPU machine's: the executables may leave its symbols to the loader there.
    cmake -S "$tmp/llama.cpp" -B "$tmp/build" -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real \
      -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined > "$tmp/cmake.log" 2>&1 || { tail -n 30 "$tmp/cmake.log"; exit 1; }
    cmake --build "$tmp/build" -j "$(nproc)" --target llama-bench llama-batched-bench > "$tmp/build.log" 2>&1 \
      || { grep -E -A5 "error" "$tmp/build.log" | head -n 40; exit 1; }
    mkdir "$tmp/lcppbin"
    cp -a "$tmp/build/bin/"* "$tmp/lcppbin/"
    strip --strip-unneeded "$tmp/lcppbin/"*.so* "$tmp/lcppbin/llama-bench" "$tmp/lcppbin/llama-batched-bench" 2> /dev/null || true
    tar cJf "$dir/lcpp-bin.txz" -C "$tmp" lcppbin
    du -sh "$dir/lcpp-bin.txz" >&2
    ;;
  run)
    [ $# -eq 2 ] || die "usage: run DIR"
    dir="$(cd "$2" && pwd)"
    for f in lcpp.txz model.gguf.xz hdr; do [ -e "$dir/$f" ] || die "no $dir/$f (prepare first)"; done
    work="${TMPDIR:-/tmp}/flashmem-gpu-bench"
    mkdir -p "$work"
    model="$work/model.gguf"
    [ -f "$model" ] || xz -dc "$dir/model.gguf.xz" > "$model"
    if [ -f "$dir/lcpp-bin.txz" ] && [ ! -x "$work/lcppbin/llama-bench" ]; then  # built by build-peer
      tar xJf "$dir/lcpp-bin.txz" -C "$work"
      echo rc=0 > "$work/lcpp.log"
      touch "$work/lcpp.started"
    fi
    if [ ! -f "$work/lcpp.started" ]; then  # kept across calls while the machine stays warm
      touch "$work/lcpp.started"
      tar xJf "$dir/lcpp.txz" -C "$work"
      setsid nohup bash -c "cmake -S '$work/llama.cpp' -B '$work/lcpp-build' -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
          -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
          -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release > '$work/lcpp.log' 2>&1 &&
        nice -n 5 cmake --build '$work/lcpp-build' -j 12 --target llama-bench llama-batched-bench >> '$work/lcpp.log' 2>&1;
        echo rc=\$? >> '$work/lcpp.log'" > /dev/null 2>&1 < /dev/null &
    fi
    b="${BUILD_DIR:-build-gpu}"
    cmake -S . -B "$b" -DCMAKE_BUILD_TYPE=Release -DFLASHMEM_CUDA=ON -DFLASHMEM_BUILD_TESTS=OFF -DFLASHMEM_BUILD_BENCH=OFF \
      -DFLASHMEM_OPENBLAS=OFF -DFLASHMEM_HEADERS_DIR="$dir/hdr" > "$work/cmake.log" 2>&1 || { tail -n 30 "$work/cmake.log"; exit 1; }
    cmake --build "$b" -j "$(nproc)" --target flashmem flashmem_gpu_bench > "$work/build.log" 2>&1 \
      || { grep -E -A5 "error" "$work/build.log" | head -n 60; exit 1; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    echo "flashmem $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (modified)')"
    tests="${TESTS:-prefill decode batch}"
    fm() { echo "\$ flashmem bench $*"; "$b/flashmem" bench -m "$model" --backend cuda "$@" | grep -E '^\|'; }
    for t in $tests; do
      case "$t" in
        prefill) fm -p 8000 -d 0 -n 128 -r 3 ;;
        decode) fm -p 0 -d 8000 -n 128 -r 3 ;;
        batch) fm -p 0 -d 8000 -b 16 -n 64 -r 2 ;;
        *) die "unknown test $t" ;;
      esac
    done
    for _ in $(seq 1 120); do grep -q '^rc=' "$work/lcpp.log" && break; sleep 5; done
    grep -q '^rc=0' "$work/lcpp.log" || { tail -n 20 "$work/lcpp.log"; die "llama.cpp did not build"; }
    bin="$work/lcpp-build/bin"
    if [ -x "$work/lcppbin/llama-bench" ]; then
      bin="$work/lcppbin"
      export LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    for t in $tests; do
      case "$t" in
        prefill) echo "\$ llama-bench -ngl 99 -fa 1 -p 8000 -n 128 -r 3"
                 "$bin/llama-bench" -m "$model" -ngl 99 -fa 1 -p 8000 -n 128 -r 3 | grep -E '^\|' ;;
        decode) echo "\$ llama-bench -ngl 99 -fa 1 -p 0 -n 128 -d 8000 -r 3"
                "$bin/llama-bench" -m "$model" -ngl 99 -fa 1 -p 0 -n 128 -d 8000 -r 3 | grep -E '^\|' ;;
        batch) echo "\$ llama-batched-bench -ngl 99 -fa on -c 140000 -npp 8000 -ntg 64 -npl 1,16"
               "$bin/llama-batched-bench" -m "$model" -ngl 99 -fa on -c 140000 -npp 8000 -ntg 64 -npl 1,16 | grep -E '^\|' ;;
      esac
    done
    echo "kernels:"
    "$b/flashmem_gpu_bench"
    ;;
  *)
    die "usage: prepare MODEL DIR | build-peer DIR | run DIR"
    ;;
esac
