#!/usr/bin/env bash
# Lists module dependency cycles inside each crate of the workspace (issue 21: "no module
# cycles"). Exit status 1 when there is any, so it can gate CI; `--quiet` prints only cycles.
#
# What it checks (an approximation from the source text, not from rustc):
# - Every `crates/<crate>/src/**/*.rs` file is a module: `lib.rs`/`main.rs` the crate root,
#   `a.rs` and `a/mod.rs` module `a`, `a/b.rs` module `a::b` (`#[path]` is not followed;
#   `src/bin/*` are left out).
# - A file depends on the modules named by the paths it writes: `crate::a::b::…` and
#   `super::…::x::…` (also inside `use … {…}` groups, nested ones included), resolved to the
#   longest prefix that is a module file. Comment lines (`//`, `//!`, `///`: doc links are no
#   dependency) and everything from the first `#[cfg(test)]` on (unit tests at the end of a
#   file) are not read; nor are modules declared for tests only (`#[cfg(test)] mod x;`, or a
#   `mod x;` after the parent's first `#[cfg(test)]`) and their children.
# - A dependency of module A on module B counts between the two children of their deepest
#   common ancestor that contain A and B: `lab::controller::up` → `lab::controller::vmops::x`
#   is an edge `up → vmops` under `lab::controller`. Dependencies of a module on its own
#   ancestors or descendants are not edges (a parent declares its children).
# - Every strongly connected component of two or more siblings is reported as
#   `crate::parent: a ↔ b` (two modules) or `crate::parent: {a, b, c}` with one cycle through
#   them written out, and the files and lines that make each edge with `-v`.
#
# Usage: scripts/modcycles.sh [-v] [--quiet] [crate-dir ...]   (default: every crates/*)
set -euo pipefail

cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import os
import re
import sys

args = [a for a in sys.argv[1:] if not a.startswith("-")]
verbose = "-v" in sys.argv[1:]
quiet = "--quiet" in sys.argv[1:]
crates = args or sorted(
    os.path.join("crates", d) for d in os.listdir("crates")
    if os.path.isdir(os.path.join("crates", d, "src"))
)

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod" or (len(rel) == 1 and rel[0] in ("lib", "main")):
        rel = rel[:-1]
    return tuple(rel)


def expand(prefix, text, i, out):
    """Paths of a `{...}` group starting at text[i] == '{', appended to prefix."""
    depth, start, j = 0, i + 1, i
    items = []
    while j < len(text):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                items.append(text[start:j])
                break
        elif c == "," and depth == 1:
            items.append(text[start:j])
            start = j + 1
        j += 1
    for it in items:
        it = it.strip()
        if not it:
            continue
        m = re.match(r"((?:%s)(?:\s*::\s*%s)*)(\s*::\s*\{)?" % (IDENT, IDENT), it)
        if not m:
            continue
        segs = [s.strip() for s in m.group(1).split("::")]
        if m.group(2):
            expand(prefix + segs, it, it.index("{", m.end(1)), out)
        else:
            out.append(prefix + segs)


def paths_in(text):
    """(kind, segments) for every crate:: / super:: path in text."""
    out = []
    for m in re.finditer(r"\b(crate|super(?:\s*::\s*super)*)\s*::\s*", text):
        head = m.group(1)
        kind = "crate" if head == "crate" else head.count("super")
        rest = text[m.end():]
        if rest.startswith("{"):
            got = []
            expand([], rest, 0, got)
            out.extend((kind, p) for p in got)
            continue
        pm = re.match(r"%s(?:\s*::\s*%s)*(\s*::\s*\{)?" % (IDENT, IDENT), rest)
        if not pm:
            continue
        segs = [s.strip() for s in re.sub(r"\s*::\s*\{$", "", pm.group(0)).split("::")]
        segs = [s for s in segs if s]
        if pm.group(1):
            got = []
            expand(segs, rest, rest.index("{", pm.end(0) - 1), got)
            out.extend((kind, p) for p in got)
        else:
            out.append((kind, segs))
    return out


def strip(text):
    cut = text.find("#[cfg(test)]")
    if cut >= 0:
        text = text[:cut]
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("//")]
    return "\n".join(lines)


def sccs(nodes, edges):
    index, low, stack, on, res = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            res.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return [c for c in res if len(c) > 1]


def one_cycle(comp, edges):
    """A cycle through comp's first node (breadth-first back to it)."""
    start = comp[0]
    members = set(comp)
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges.get(v, ())):
            if w not in members:
                continue
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


total = 0
for crate in crates:
    src = os.path.join(crate, "src")
    files = {}
    for root, dirs, names in os.walk(src):
        dirs[:] = [d for d in dirs if not (root == src and d == "bin")]
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(root, n)
                files[module_of(src, p)] = p
    # Modules compiled for tests only (`#[cfg(test)] mod x;`, or declared after the parent's
    # first `#[cfg(test)]`) are test code like a file's unit tests: not read, with their children.
    def test_only(mod):
        if not mod:
            return False
        parent = files.get(mod[:-1])
        if parent is None:
            return False
        with open(parent, encoding="utf-8") as f:
            text = f.read()
        m = re.search(r"(?m)^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+%s\s*;" % re.escape(mod[-1]), text)
        if not m:
            return False
        cut = text.find("#[cfg(test)]")
        if 0 <= cut < m.start():
            return True
        before = text[: m.start()].rstrip().splitlines()
        return bool(before) and before[-1].strip().startswith("#[cfg(test)]")
    tests = {m for m in files if test_only(m)}
    files = {m: p for m, p in files.items() if not any(m[: len(t)] == t for t in tests)}
    mods = set(files)
    # edges[parent][a] = {b: [where]}
    edges = {}
    for mod, path in sorted(files.items()):
        with open(path, encoding="utf-8") as f:
            text = strip(f.read())
        for kind, segs in paths_in(text):
            if kind == "crate":
                base = ()
            else:
                # `super` of a file module: its parent module; n times up.
                base = mod[: len(mod) - kind] if len(mod) >= kind else None
                if base is None:
                    continue
            full = base + tuple(segs)
            target = ()
            for k in range(len(full), -1, -1):
                if full[:k] in mods:
                    target = full[:k]
                    break
            common = 0
            while common < min(len(mod), len(target)) and mod[common] == target[common]:
                common += 1
            if common == len(mod) or common == len(target):
                continue  # ancestor or descendant (or itself)
            parent = mod[:common]
            a, b = mod[common], target[common]
            edges.setdefault(parent, {}).setdefault(a, {}).setdefault(b, []).append(
                "%s -> %s" % (path, "::".join(full)))
    name = os.path.basename(crate)
    for parent in sorted(edges):
        g = {a: set(bs) for a, bs in edges[parent].items()}
        nodes = set(g) | {b for bs in g.values() for b in bs}
        for comp in sccs(nodes, g):
            total += 1
            where = "::".join((name,) + parent)
            if len(comp) == 2:
                print("%s: %s \u2194 %s" % (where, comp[0], comp[1]))
            else:
                cyc = one_cycle(comp, g)
                print("%s: {%s} e.g. %s" % (where, ", ".join(comp), " \u2192 ".join(cyc)))
            if verbose:
                for a in comp:
                    for b in sorted(g.get(a, ())):
                        if b in comp:
                            for w in sorted(set(edges[parent][a][b])):
                                print("    %s \u2192 %s: %s" % (a, b, w))
if not quiet:
    print("%d module cycle(s)" % total)
sys.exit(1 if total else 0)
PY
