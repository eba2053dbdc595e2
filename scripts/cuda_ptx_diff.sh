#!/usr/bin/env bash
# PTX of every CUDA kernel at two commits, compared kernel by kernel: the second half of the proof
# that a refactor of csrc/cuda preserves behaviour (scripts/cuda_sass_diff.sh is the first). Where
# the machine code of a kernel differs, this says whether the compiler's output before the
# assembler (ptxas) was already different, and how.
#
#   scripts/cuda_ptx_diff.sh REV_BEFORE REV_AFTER BUILD_DIR OUT_DIR [FILE.cu ...]
#
# Exports csrc/ of both revisions (git archive) into OUT_DIR/src-{before,after}, compiles each
# translation unit of csrc/cuda (or only the FILEs named) to PTX with the exact nvcc command line
# of the molphenix_cuda objects in BUILD_DIR (a configured CUDA build directory; its `-c ... -o`
# replaced by `-ptx`), and classifies every kernel (.entry):
#   identical  the same PTX text (after dropping .loc/.file line info and comments, and
#              normalising nvcc's hashed anonymous-namespace name and the numbered block labels);
#   renamed    the same program: the same instructions with the virtual registers renamed by one
#              bijection, where a run of consecutive moves only has to have the same effect (for
#              example 16 accumulators zeroed in another order), and a move of a constant into a
#              register that provably holds it already (straight-line code) is ignored;
#   DIFFERS    anything else. For these (and for `renamed`) OUT_DIR/diff/<file>/<n>.diff holds the
#              unified diff that remains after renaming the `before` registers by the bijection
#              that the matching lines imply: what is left is the real difference, to explain.
# Prints one row per kernel and a summary; exit status 0 when no kernel is DIFFERS.
# Env: PYTHON (default python3).
set -u
if [ $# -lt 4 ]; then
  echo "usage: $0 REV_BEFORE REV_AFTER BUILD_DIR OUT_DIR [FILE.cu ...]" >&2
  exit 2
fi
rb=$1; ra=$2; build=$3; out=$4; shift 4
py=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
command -v ninja >/dev/null || { echo "error: ninja not found" >&2; exit 2; }
cmds=$(ninja -C "$build" -t commands molphenix_cuda 2>/dev/null | grep -- "-x cu -c .*\.cu -o") || {
  echo "error: $build: no nvcc commands of molphenix_cuda (not a configured CUDA build)" >&2; exit 2; }
mkdir -p "$out"
for side in before after; do
  rev=$rb; [ $side = after ] && rev=$ra
  rm -rf "$out/src-$side"; mkdir -p "$out/src-$side" "$out/ptx-$side"
  git -C "$root" archive "$rev" csrc | tar -x -C "$out/src-$side" || exit 2
  echo "# $side: $(git -C "$root" rev-parse --short "$rev")"
done
echo "# nvcc: $(nvcc --version | tail -1)"
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  mapfile -t files < <(echo "$cmds" | sed -E 's/.* -x cu -c (\S+) -o .*/\1/' | xargs -n1 basename)
fi
for f in "${files[@]}"; do
  line=$(echo "$cmds" | grep -- "/csrc/cuda/$f -o") || { echo "error: no command for $f" >&2; exit 2; }
  for side in before after; do
    src="$out/src-$side"
    # nvcc and its flags only (no launcher), no depfile flags, -ptx instead of -c/-o.
    cmd=$(echo "$line" | sed -E 's/^.*(\S*nvcc) /\1 /; s/ -MD//; s/ -MT \S+//; s/ -MF \S+//; s/ -x cu -c \S+ -o \S+$//')
    cmd=$(echo "$cmd" | sed -E "s# -I\S+/csrc/include# -I$src/csrc/include#")
    if ! $cmd -x cu -ptx "$src/csrc/cuda/$f" -o "$out/ptx-$side/${f%.cu}.ptx"; then
      echo "error: PTX of $side $f failed" >&2; exit 1
    fi
  done
done
exec "$py" - "$out" "${files[@]}" <<'PY'
import difflib, os, re, sys

out, files = sys.argv[1], sys.argv[2:]
REG = re.compile(r"%[a-z]*\d+\b")
MOV = re.compile(r"^\s*mov\.([a-z0-9]+)\s+(%[a-z]*\d+),\s*(%[a-z]*\d+|[-0-9a-fA-Fx.]+);\s*$")


def norm_anon(s):
    # nvcc names the anonymous namespace <len>_GLOBAL__N__<hash>_<file>_<hash>[_<n>]: the mangled
    # length says where the name ends.
    res, pos = [], 0
    for m in re.finditer(r"(\d+)(_GLOBAL__N__)", s):
        if m.start() < pos:
            continue
        res += [s[pos:m.start()], "11_GLOBAL__N_"]
        pos = m.start(2) + int(m.group(1))
    return "".join(res + [s[pos:]])


def kernels(path):
    s = re.sub(r"\$L__BB\d+_", "$L__BB_", norm_anon(open(path).read()))
    s = s.split("\t.section\t.debug")[0]
    res, cur = {}, None
    for ln in s.split("\n"):
        st = ln.strip()
        if not st or st.startswith((".loc", ".file", "//")):
            continue
        m = re.match(r"(?:\.visible )?\.entry (\S+)\(", ln)
        if m:
            cur = m.group(1)
            res[cur] = []
        elif re.match(r"^\.(visible |extern |weak )*(\.global|\.shared|\.const|\.func)", ln):
            cur = None
        if cur:
            res[cur].append(ln)
    return res


def shape(ln):
    return REG.sub("%", ln)


def mov_blocks(lines):
    """(start, end) of the maximal runs of register moves `mov.T %x, %y|IMM;`."""
    res, i = [], 0
    while i < len(lines):
        if MOV.match(lines[i]):
            j = i
            while j < len(lines) and MOV.match(lines[j]):
                j += 1
            res.append((i, j))
            i = j
        else:
            i += 1
    return res


def effect(lines, i, j):
    """What a run of moves leaves: {register: ("imm", type, text) | ("reg", type, source)}, the
    sources being registers as they were before the run (moves run in order)."""
    val = {}
    for ln in lines[i:j]:
        ty, dst, src = MOV.match(ln).groups()
        val[dst] = val[src] if src in val else (("reg", ty, src) if src.startswith("%") else ("imm", ty, src))
    return val


def drop_redundant_moves(lines):
    """The lines without the moves of a constant into a register that provably holds it already
    (set by an earlier constant move on the straight-line path: knowledge ends at every label and
    at every other instruction that names the register). Such a move changes nothing."""
    res, known = [], {}
    for ln in lines:
        st = ln.strip()
        if st.endswith(":"):
            known.clear()
        m = MOV.match(ln)
        if m:
            ty, dst, src = m.groups()
            v = known.get(src) if src.startswith("%") else (ty, src)
            if v is not None and not src.startswith("%") and known.get(dst) == v:
                continue
            if v is None:
                known.pop(dst, None)
            else:
                known[dst] = v
        else:
            for r in REG.findall(ln):
                known.pop(r, None)
        res.append(ln)
    return res


def renamed(b, a):
    """True when a is b with its virtual registers renamed by one bijection (one pairing for the
    whole kernel), where each run of consecutive moves only has to have the same effect (the same
    registers, renamed, end up holding the same values) rather than the same lines: for example 16
    accumulators zeroed in another order. Sound: every other instruction is the same after the
    renaming, and each run of moves changes the renamed state in the same way."""
    if len(b) != len(a) or any(shape(x) != shape(y) for x, y in zip(b, a)):
        return False
    blocks = mov_blocks(b)
    if blocks != mov_blocks(a):
        return False
    inblock = set(k for i, j in blocks for k in range(i, j))
    fwd, bwd = {}, {}

    def bind(x, y):
        return fwd.setdefault(x, y) == y and bwd.setdefault(y, x) == x

    for k in range(len(b)):
        if k not in inblock:
            for x, y in zip(REG.findall(b[k]), REG.findall(a[k])):
                if not bind(x, y):
                    return False
    for i, j in blocks:
        eb, ea = effect(b, i, j), effect(a, i, j)
        if len(eb) != len(ea):
            return False
        for k in range(i, j):  # sources not paired elsewhere: line by line
            x, y = MOV.match(b[k]).group(3), MOV.match(a[k]).group(3)
            if x.startswith("%") and x not in fwd and y not in bwd:
                if not bind(x, y):
                    return False

        def ren(v):
            return (v[0], v[1], fwd.get(v[2])) if v[0] == "reg" else v

        free_a = {}
        for r, v in ea.items():
            if r not in bwd:
                free_a.setdefault(v, []).append(r)
        for r, v in eb.items():
            if r not in fwd:  # defined here, read nowhere outside runs of moves: pair by value
                cand = free_a.get(ren(v), [])
                if not cand or not bind(r, cand.pop(0)):
                    return False
        if {fwd[r]: ren(v) for r, v in eb.items()} != ea:
            return False
    return True


def residual(b, a):
    """Unified diff of a against b with b's registers renamed by the pairing that lines of the same
    shape imply (first pairing wins): what remains is the real difference."""
    sm = difflib.SequenceMatcher(None, [shape(x) for x in b], [shape(x) for x in a], autojunk=False)
    fwd, used = {}, set()
    for tag, i0, i1, j0, j1 in sm.get_opcodes():
        if tag == "equal":
            for k in range(i1 - i0):
                if MOV.match(b[i0 + k]):  # pair registers by their other uses first
                    continue
                for x, y in zip(REG.findall(b[i0 + k]), REG.findall(a[j0 + k])):
                    if x not in fwd and y not in used:
                        fwd[x] = y
                        used.add(y)
    ren = [REG.sub(lambda m: fwd.get(m.group(0), m.group(0) + "'"), x) for x in b]
    return list(difflib.unified_diff(ren, a, "before (registers renamed)", "after", lineterm="", n=3))


counts = {"identical": 0, "renamed": 0, "DIFFERS": 0, "ONLY-BEFORE": 0, "ONLY-AFTER": 0}
print("# status    file                               kernel")
for f in files:
    base = f[:-3]
    kb = kernels(os.path.join(out, "ptx-before", base + ".ptx"))
    ka = kernels(os.path.join(out, "ptx-after", base + ".ptx"))
    for n, name in enumerate(sorted(set(kb) | set(ka))):
        if name not in ka or name not in kb:
            st = "ONLY-" + ("BEFORE" if name in kb else "AFTER")
        elif kb[name] == ka[name]:
            st = "identical"
        elif [shape(x) for x in kb[name][:2]] == [shape(x) for x in ka[name][:2]] and \
                renamed(drop_redundant_moves(kb[name][2:]), drop_redundant_moves(ka[name][2:])):
            st = "renamed"
        else:
            st = "DIFFERS"
        counts[st] += 1
        print("%-10s  %-33s  %s" % (st, f, name))
        if st in ("renamed", "DIFFERS"):
            d = os.path.join(out, "diff", f)
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "%03d.diff" % n), "w") as fh:
                fh.write("// %s (%s)\n" % (name, st))
                fh.write("\n".join(residual(kb[name], ka[name])) + "\n")
print("# kernels: %d; " % sum(counts.values()) + ", ".join("%s %d" % kv for kv in counts.items()))
sys.exit(1 if counts["DIFFERS"] or counts["ONLY-BEFORE"] or counts["ONLY-AFTER"] else 0)
PY
