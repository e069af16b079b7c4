#!/usr/bin/env bash
# Install huatuo from this offline artifact: verify every file first, then install without network.
#
#   ./install.sh [--prefix DIR] [--models DIR] [--python PYTHON] [--trust-key IT.pub]
#   ./install.sh --uninstall [--prefix DIR]
#
# PREFIX (default /opt/huatuo as root, else ~/.local/opt/huatuo) gets <version>/venv and
# bin/huatuo -> <version>/venv/bin/huatuo; another version installs beside it and takes bin/huatuo.
# Bundles go to the machine-wide models folder (/usr/local/share/huatuo/models) or --models DIR,
# each beside the ones already there. Nothing is changed unless MANIFEST.sha256 matches every file
# and lists every file. PYTHON (default python3) is a CPython the artifact has a lock for
# (requirements-cpXY.lock: 3.10 to 3.13), and that lock is what is installed; another is refused.
# --trust-key pins IT's bundle-signing key (the .pub of `huatuo convert keygen`)
# in <version>/venv/etc/huatuo/trusted-keys: from then on that huatuo uses only bundles signed with
# it, and the bundles of this artifact must be signed before anything is copied. See README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$(id -u)" = 0 ]; then prefix=/opt/huatuo; else prefix="$HOME/.local/opt/huatuo"; fi
models="" python="python3" uninstall=0 trust_key=""

die() { echo "install.sh: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --trust-key) trust_key="$(realpath -e "$2")" || die "no key file $2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
prefix="$(realpath -m "$prefix")"
version="$(cat "$here/VERSION" 2>/dev/null)" || die "no VERSION file: not a huatuo artifact"

if [ "$uninstall" = 1 ]; then
  [ -d "$prefix/$version" ] || die "huatuo $version is not installed in $prefix"
  if [ "$(readlink "$prefix/bin/huatuo" 2>/dev/null)" = "$prefix/$version/venv/bin/huatuo" ]; then
    rm -f "$prefix/bin/huatuo"
  fi
  rm -rf "$prefix/$version"
  echo "removed huatuo $version from $prefix (model bundles, config and the audit log are kept)"
  exit 0
fi

# 1. proof of integrity: every listed file has its hash, and no file is unlisted
cd "$here"
checked=0
report="$(sha256sum --quiet --strict -c MANIFEST.sha256 2>&1)" && checked=1  # one pass: bundles are gigabytes
bad="$(sed -n 's/: FAILED.*$//p' <<<"$report")"
[ -z "$bad" ] || die "refusing to install: these files differ from MANIFEST.sha256 or are missing: $bad"
[ "$checked" = 1 ] || die "refusing to install: MANIFEST.sha256 does not check: $report"
extra="$(comm -13 <(sed 's/^[0-9a-f]*  //' MANIFEST.sha256 | sort) \
                  <(find . -type f ! -name MANIFEST.sha256 | sed 's|^\./||' | sort))"
[ -z "$extra" ] || die "refusing to install: files not in MANIFEST.sha256: $extra"
supported="$(ls requirements-cp3*.lock 2>/dev/null | sed 's/^requirements-cp3\(.*\)\.lock$/3.\1/' | sort -t. -k2n | paste -sd' ')"
[ -n "$supported" ] || die "no requirements-cpXY.lock: not a huatuo artifact"
command -v "$python" >/dev/null || die "$python not found (huatuo needs CPython $supported; pass --python)"
pyver="$("$python" -c 'import sys; print(sys.implementation.name, "%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
  || die "$python does not run (huatuo needs CPython $supported; pass --python)"
lock="requirements-cp${pyver#cpython }.lock" lock="${lock/./}"
case "$pyver" in
  "cpython "*) [ -f "$lock" ] || die "$python is Python ${pyver#cpython }: this artifact supports CPython $supported (pass --python)" ;;
  *) die "$python is ${pyver% *} ${pyver#* }, not CPython: this artifact supports CPython $supported (pass --python)" ;;
esac

# 2. the environment, from the wheelhouse alone, every wheel checked against the lock
venv="$prefix/$version/venv"
[ ! -e "$prefix/$version" ] || die "huatuo $version is already installed in $prefix (--uninstall first)"
mkdir -p "$prefix/bin"
"$python" -m venv "$venv"
PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 "$venv/bin/python" -m pip install -q --no-index --no-cache-dir \
  --disable-pip-version-check --find-links "$here/wheelhouse" --require-hashes -r "$here/$lock" \
  || { rm -rf "${prefix:?}/$version"; die "pip refused the wheelhouse (see above); nothing installed"; }

# 2b. IT's signing key, pinned: checked as a key, then every bundle of this artifact checked against it
if [ -n "$trust_key" ]; then
  undo() { rm -rf "${prefix:?}/$version"; die "$1; nothing installed"; }
  "$venv/bin/python" - "$trust_key" <<'PY' || undo "--trust-key $trust_key is not a huatuo-ed25519 public key file"
import sys
from huatuo_cli.bundles.signing import parse_public_key
lines = [line for line in open(sys.argv[1], encoding="utf-8") if line.strip() and not line.startswith("#")]
assert lines, "no key in the file"
for line in lines:
    parse_public_key(line)
PY
  mkdir -p "$venv/etc/huatuo"
  install -m 0644 "$trust_key" "$venv/etc/huatuo/trusted-keys"
  for bundle in bundles/*/; do
    [ -d "$bundle" ] || continue
    "$venv/bin/huatuo" models verify "$bundle" || undo "bundle $(basename "$bundle") is not signed by the trusted key"
  done
fi
ln -sfn "$venv/bin/huatuo" "$prefix/bin/huatuo"

# 3. bundles beside the ones already installed
if [ -z "$models" ]; then
  models="$("$venv/bin/python" -c 'from huatuo_cli.bundles.locate import models_dirs; print(models_dirs()[-1])')"
fi
mkdir -p "$models"
installed=()
for bundle in bundles/*/; do
  [ -d "$bundle" ] || continue
  name="$(basename "$bundle")" dest="$models/$(basename "$bundle")"
  if [ -e "$dest" ] && ! cmp -s "$bundle/manifest.json" "$dest/manifest.json"; then
    dest="$models/$name-$(sha256sum "$bundle/manifest.json" | cut -c1-12)"  # same name, other model
  fi
  if [ ! -e "$dest" ]; then
    cp -r "$bundle" "$dest.partial" && chmod -R a+rX "$dest.partial" && mv "$dest.partial" "$dest"  # readable by every user
  fi
  installed+=("$dest")
done

# 4. the installed engine checks itself and every bundle it was given
"$prefix/bin/huatuo" doctor
for dest in "${installed[@]}"; do "$prefix/bin/huatuo" models verify "$dest"; done
echo "installed huatuo $version: $prefix/bin/huatuo; bundles in $models"
