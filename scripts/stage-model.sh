#!/usr/bin/env bash
# Moves a model file too large for one transfer onto a machine in parts, resumably: the device
# machine receives at most ~64 MiB of the working tree per call, but keeps its temporary folder
# while it stays warm, so a model is carried a few parts per call and assembled there.
#
#   scripts/stage-model.sh split MODEL DIR [MiB]   # here: DIR/part.000 …, DIR/manifest (sha256 of
#                                                  # every part and of the whole); parts of 56 MiB
#   scripts/stage-model.sh put DIR STAGE           # there: copies the parts present in DIR that
#                                                  # STAGE lacks, checking each one's sha256
#   scripts/stage-model.sh missing DIR STAGE       # there: the parts STAGE still lacks, one per line
#   scripts/stage-model.sh assemble STAGE OUT      # there: once all are in, OUT = the model, checked
#
# A fresh machine simply reports every part missing, so a driver can loop: carry the next parts
# `missing` names, `put`, repeat, then `assemble`. The manifest travels with every call.
set -euo pipefail

die() { echo "stage-model: error: $*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

cmd="${1:-}"
case "$cmd" in
  split)
    [ $# -ge 3 ] || die "usage: split MODEL DIR [MiB]"
    model="$2" dir="$3" mib="${4:-56}"
    [ -f "$model" ] || die "no model file $model"
    mkdir -p "$dir"
    rm -f "$dir"/part.* "$dir/manifest"
    split -b "${mib}M" -d -a 3 "$model" "$dir/part."
    {
      echo "model $(basename "$model") $(stat -c %s "$model") $(sha "$model")"
      for p in "$dir"/part.*; do echo "part $(basename "$p") $(stat -c %s "$p") $(sha "$p")"; done
    } > "$dir/manifest"
    echo "stage-model: $(grep -c '^part' "$dir/manifest") parts of ≤ $mib MiB in $dir" >&2
    ;;
  put)
    [ $# -eq 3 ] || die "usage: put DIR STAGE"
    dir="$2" stage="$3"
    [ -f "$dir/manifest" ] || die "no manifest in $dir"
    mkdir -p "$stage"
    cp "$dir/manifest" "$stage/manifest"
    while read -r kind name size sum; do
      [ "$kind" = part ] || continue
      [ -f "$stage/$name" ] && [ "$(sha "$stage/$name")" = "$sum" ] && continue
      [ -f "$dir/$name" ] || continue
      [ "$(sha "$dir/$name")" = "$sum" ] || die "$dir/$name does not match the manifest"
      cp "$dir/$name" "$stage/$name.tmp" && mv "$stage/$name.tmp" "$stage/$name"
      echo "stage-model: staged $name" >&2
    done < "$dir/manifest"
    ;;
  missing)
    [ $# -eq 3 ] || die "usage: missing DIR STAGE"
    dir="$2" stage="$3"
    manifest="$dir/manifest"
    [ -f "$manifest" ] || manifest="$stage/manifest"
    [ -f "$manifest" ] || die "no manifest in $dir or $stage"
    while read -r kind name size sum; do
      [ "$kind" = part ] || continue
      if [ ! -f "$stage/$name" ] || [ "$(stat -c %s "$stage/$name")" != "$size" ]; then echo "$name"; fi
    done < "$manifest"
    ;;
  assemble)
    [ $# -eq 3 ] || die "usage: assemble STAGE OUT"
    stage="$2" out="$3"
    [ -f "$stage/manifest" ] || die "no manifest in $stage"
    read -r _ name size sum < <(grep '^model' "$stage/manifest")
    if [ -f "$out" ] && [ "$(sha "$out")" = "$sum" ]; then echo "$out"; exit 0; fi
    left=$("$0" missing "$stage" "$stage" | wc -l)
    [ "$left" -eq 0 ] || die "$left parts of $name are still missing"
    : > "$out.tmp"
    while read -r kind part _ _; do [ "$kind" = part ] && cat "$stage/$part" >> "$out.tmp"; done < "$stage/manifest"
    [ "$(sha "$out.tmp")" = "$sum" ] || { rm -f "$out.tmp"; die "the assembled $name does not match its sha256"; }
    mv "$out.tmp" "$out"
    echo "$out"
    ;;
  *)
    die "usage: stage-model.sh split|put|missing|assemble ... (see the script's header)"
    ;;
esac
