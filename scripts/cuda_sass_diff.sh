#!/usr/bin/env bash
# Machine code of every CUDA kernel, before vs after a change: proof that a refactor of csrc/cuda
# is behaviour-preserving on a machine with nvcc but no GPU.
#
# For every object of the molphenix_cuda library (csrc/CMakeFiles/molphenix_cuda.dir/**/*.cu.o) in
# two build directories, dumps the SASS (`cuobjdump -sass`) and the resource usage
# (`cuobjdump -res-usage`: registers, stack, shared, local, constant bank) of each kernel, and
# compares them kernel by kernel. Normalised before comparing: instruction addresses (`/*0a30*/`)
# are dropped, each instruction is joined with its two 64-bit encoding words (opcode, operands and
# the scheduling control bits: stall counts, barriers, reuse flags), and nvcc's per-file name of
# the anonymous namespace (`<len>_GLOBAL__N__<hash>_<file>_cu_<hash>`, which carries hashes that
# may change with the file) becomes `_GLOBAL__N_`. Branch targets are offsets inside the kernel
# and are kept. A kernel is `identical` when its normalised SASS text and encodings and its
# resource usage are the same; `same-text` when only encoding words differ (control bits);
# `DIFFERS` otherwise, with `ops same` when the two have the same multiset of opcodes (the same
# instructions, scheduled or register-allocated differently) or `ops +N/-M` instructions. A kernel present on one side only is `ONLY-BEFORE` / `ONLY-AFTER`.
#
#   scripts/cuda_sass_diff.sh BEFORE_BUILD AFTER_BUILD [OUT_DIR]
#
# BEFORE_BUILD / AFTER_BUILD: build directories of the same configuration (for example made by
#   `scripts/cuda_compile_times.sh 90-real 1 SRC BUILD_DIR`, or `MOLPHENIX_WITH_CUDA=ON
#   MOLPHENIX_CUDA_ARCHS=90-real MOLPHENIX_BUILD_DIR=BUILD_DIR scripts/dev_build.sh`) of the two
#   commits to compare.
# OUT_DIR (optional): the normalised SASS of every kernel (OUT_DIR/{before,after}/<object>/<n>.sass,
#   with an index) and a unified diff of every kernel that is not identical.
# Prints one row per kernel and a summary; exits 0 when every kernel is identical, 1 otherwise,
# 2 on usage errors.
# Env: CUOBJDUMP (default: cuobjdump on PATH, else the pip package nvidia-cuda-cuobjdump's binary
#   in the active Python environment), PYTHON (default python3), CXXFILT (default c++filt).
set -u
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 BEFORE_BUILD AFTER_BUILD [OUT_DIR]" >&2
  exit 2
fi
before=$1
after=$2
out=${3:-}
py=${PYTHON:-python3}
cuobjdump=${CUOBJDUMP:-$(command -v cuobjdump || true)}
if [ -z "$cuobjdump" ]; then
  cuobjdump=$("$py" -c 'import nvidia, os, glob
for d in nvidia.__path__:
    for p in glob.glob(os.path.join(d, "*", "bin", "cuobjdump")):
        print(p); raise SystemExit' 2>/dev/null || true)
fi
if [ -z "$cuobjdump" ] || [ ! -x "$cuobjdump" ]; then
  echo "error: cuobjdump not found (set CUOBJDUMP, or pip install nvidia-cuda-cuobjdump into a venv)" >&2
  exit 2
fi
for d in "$before" "$after"; do
  if [ ! -d "$d/csrc/CMakeFiles/molphenix_cuda.dir" ]; then
    echo "error: $d: no csrc/CMakeFiles/molphenix_cuda.dir (not a CUDA build directory)" >&2
    exit 2
  fi
done
echo "# cuobjdump: $("$cuobjdump" --version | tail -1)"
exec "$py" - "$cuobjdump" "${CXXFILT:-c++filt}" "$before" "$after" "$out" <<'PY'
import difflib, os, re, subprocess, sys

cuobjdump, cxxfilt, before, after, out = sys.argv[1:6]
def norm_name(s):
    # nvcc names the anonymous namespace <len>_GLOBAL__N__<hash>_<file>_<hash>[_<n>]; the mangled
    # length says where the name ends. `11_GLOBAL__N_` keeps the demangler happy.
    res, pos = [], 0
    for m in re.finditer(r"(\d+)(_GLOBAL__N__)", s):
        if m.start() < pos:
            continue
        res += [s[pos:m.start()], "11_GLOBAL__N_"]
        pos = m.start(2) + int(m.group(1))
    return "".join(res + [s[pos:]])


def objects(build):
    root = os.path.join(build, "csrc", "CMakeFiles", "molphenix_cuda.dir")
    res = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".cu.o"):
                res[os.path.relpath(os.path.join(d, f), root)] = os.path.join(d, f)
    return res


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def sass(obj):
    """{kernel: [normalised instruction lines]} (several arches: name@sm_XX)."""
    funcs, cur, arch, lines = {}, None, "", run(cuobjdump, "-sass", obj).splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        m = re.match(r"\s*code for (sm_\w+)", ln)
        if m:
            arch = m.group(1)
        m = re.match(r"\s*Function : (\S+)", ln)
        if m:
            cur = norm_name(m.group(1)) + "@" + arch
            funcs[cur] = []
        elif cur is not None:
            m = re.match(r"\s*/\*[0-9a-f]+\*/\s+(.*?)\s*/\* (0x[0-9a-f]+) \*/\s*$", ln)
            if m:
                enc2 = ""
                if i + 1 < len(lines):
                    m2 = re.match(r"\s*/\* (0x[0-9a-f]+) \*/\s*$", lines[i + 1])
                    if m2:
                        enc2 = m2.group(1)
                        i += 1
                text = re.sub(r"\s+", " ", norm_name(m.group(1)))
                funcs[cur].append("%-60s | %s %s" % (text, m.group(2), enc2))
            elif re.match(r"\s*\.+\s*$", ln):
                cur = None
        i += 1
    return funcs


def res_usage(obj):
    res, cur, arch = {}, None, ""
    for ln in run(cuobjdump, "-res-usage", obj).splitlines():
        m = re.match(r"\s*arch = (sm_\w+)", ln)
        if m:
            arch = m.group(1)
        m = re.match(r"\s*Function (\S+):\s*$", ln)
        if m:
            cur = norm_name(m.group(1)) + "@" + arch
        elif cur and ln.strip().startswith("REG:"):
            res[cur] = ln.strip()
            cur = None
    return res


def demangle(names):
    if not names:
        return {}
    mangled = [n.split("@")[0] for n in names]
    try:
        dem = subprocess.run([cxxfilt], input="\n".join(mangled) + "\n", capture_output=True,
                             text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        dem = mangled
    return {n: d + "  [" + n.split("@")[1] + "]" for n, d in zip(names, dem)}


def opcodes(lines):
    h = {}
    for x in lines:
        t = re.sub(r"^@!?U?P\w+\s+", "", x.split(" | ")[0]).split(" ")[0]
        h[t] = h.get(t, 0) + 1
    return h


def short(sig):
    sig = sig.replace("molphenix::cuda::", "").replace("(anonymous namespace)::", "")
    sig = sig.replace("detail::", "")
    return re.sub(r"\(.*\)", "(...)", sig) if len(sig) > 110 else sig


ob, oa = objects(before), objects(after)
counts = {"identical": 0, "same-text": 0, "DIFFERS": 0, "ONLY-BEFORE": 0, "ONLY-AFTER": 0}
rows = []
for rel in sorted(set(ob) | set(oa)):
    if rel not in ob or rel not in oa:
        rows.append(("ONLY-" + ("AFTER" if rel not in ob else "BEFORE"), rel, "(whole object)", "", ""))
        continue
    sb, sa = sass(ob[rel]), sass(oa[rel])
    rb, ra = res_usage(ob[rel]), res_usage(oa[rel])
    names = sorted(set(sb) | set(sa))
    dem = demangle(names)
    for k, n in enumerate(names):
        if n not in sb or n not in sa:
            st = "ONLY-" + ("AFTER" if n not in sb else "BEFORE")
        elif sb[n] == sa[n] and rb.get(n) == ra.get(n):
            st = "identical"
        elif [x.split(" | ")[0] for x in sb[n]] == [x.split(" | ")[0] for x in sa[n]] and \
                rb.get(n) == ra.get(n):
            st = "same-text"
        else:
            st = "DIFFERS"
        ni = "%s/%s" % (len(sb.get(n, [])), len(sa.get(n, [])))
        if st in ("DIFFERS", "same-text") and n in sb and n in sa:
            # Opcode histogram (predicate guards and operands dropped): the same multiset of
            # instructions in another order / with other registers, or how many were added/removed.
            hb, ha = opcodes(sb[n]), opcodes(sa[n])
            add = sum(max(0, ha[k] - hb.get(k, 0)) for k in ha)
            rem = sum(max(0, hb[k] - ha.get(k, 0)) for k in hb)
            ni += "  ops " + ("same" if add == rem == 0 else "+%d/-%d" % (add, rem))
        regs = re.search(r"REG:(\d+)", rb.get(n, "")), re.search(r"REG:(\d+)", ra.get(n, ""))
        rr = "%s/%s" % tuple(r.group(1) if r else "-" for r in regs)
        rows.append((st, rel, short(dem[n]), ni, rr))
        if out:
            for side, s, r in (("before", sb, rb), ("after", sa, ra)):
                if n in s:
                    d = os.path.join(out, side, rel)
                    os.makedirs(d, exist_ok=True)
                    with open(os.path.join(d, "%03d.sass" % k), "w") as f:
                        f.write("// %s\n// %s\n// %s\n" % (n, dem[n], r.get(n, "")))
                        f.write("\n".join(s[n]) + "\n")
            if st != "identical" and n in sb and n in sa:
                d = os.path.join(out, "diff", rel)
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, "%03d.diff" % k), "w") as f:
                    f.write("// %s\n" % dem[n])
                    f.write("// res before: %s\n// res after:  %s\n" % (rb.get(n), ra.get(n)))
                    f.writelines(difflib.unified_diff([x + "\n" for x in sb[n]],
                                                      [x + "\n" for x in sa[n]],
                                                      "before", "after", n=3))

print("# before: %s" % os.path.abspath(before))
print("# after:  %s" % os.path.abspath(after))
print("# status      object                              instructions before/after   regs b/a  kernel")
for st, rel, name, ni, rr in rows:
    counts[st] += 1
    print("%-12s %-35s %27s %9s  %s" % (st, rel, ni, rr, name))
total = sum(counts.values())
print("# kernels: %d; " % total + ", ".join("%s %d" % kv for kv in counts.items()))
sys.exit(0 if counts["identical"] == total else 1)
PY
