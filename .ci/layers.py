#!/usr/bin/env python3
"""Checks the broker crate's module layering (issue 14), from the code's imports.

- No import circle between modules (files), other than a parent module and its children.
- No file under broker/src/raft/ imports the domain: controller, replica, agg, search,
  topics, groups, api, node, server.
- Every import goes to the importer's layer or one below it, the layers being those of
  ARCHITECTURE.md ("Layers"), listed bottom up in LAYERS.
- Nothing outside raft/ names `openraft` (it uses the aliases raft/ exports).
- No source file in the workspace over 700 lines; no test file over 800.
- No `allow(clippy::type_complexity)`.

An import is any `crate::`, `super::` or `self::` path in non-test code (a `use`, or a path
written inline), resolved to the file of the longest module prefix; `pub use` re-exports
are followed to the file that defines the name. `mod x;` declarations are not imports.
Usage: python3 .ci/layers.py [--graph]  (exit 1 on a violation)
"""
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "broker", "src")
RAFT_MAY_NOT = {"controller", "replica", "agg", "search", "topics", "groups", "api", "node", "server"}
MAX_SOURCE, MAX_TEST = 700, 800
MODULES = set()
# ARCHITECTURE.md's layers, bottom up: each a list of module paths (a path covers its
# children). A module not listed is on the ground floor.
LAYERS = [
    ["raft"],
    ["agg", "search", "auth"],  # the features' pure halves (their tasks are listed higher up)
    ["controller"],
    ["replica"],
    ["search::feed"],
    ["topics"],
    ["agg::query", "agg::reconcile", "agg::emit", "search::scatter", "groups", "auth::gate", "auth::audit"],
    ["node", "metrics"],
    ["api"],
    ["server"],
    ["fuzzing"],  # fuzz entry points over the pure halves and the controller
]


def layer_of(m):
    """The layer of module `m`: the most specific path listed that covers it."""
    best, level = -1, 0
    for i, paths in enumerate(LAYERS):
        for p in paths:
            parts = tuple(p.split("::"))
            if m[: len(parts)] == parts and len(parts) > best:
                best, level = len(parts), i + 1
    return level


def module_of(path):
    rel = os.path.relpath(path, SRC)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return tuple(rel)


def strip(code):
    """Code without comments, string literals and test modules."""
    code = re.sub(r"//[^\n]*", "", code)
    code = re.sub(r"/\*.*?\*/", "", code, flags=re.S)
    code = re.sub(r'r#*"(?:.|\n)*?"#*', '""', code)
    code = re.sub(r'"(?:\\.|[^"\\])*"', '""', code)
    code = re.sub(r"'(?:\\.|[^'\\])'", "' '", code)
    m = re.search(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*\{", code)
    if m:
        code = code[: m.start()]
    code = re.sub(r"#\[cfg\(test\)\]\s*(pub(\(crate\))?\s+)?mod\s+\w+\s*;", "", code)
    return code


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    def go(prefix, t):
        out = []
        i = t.find("{")
        if i < 0:
            return [prefix + t]
        head, body = t[:i], t[i + 1 : -1]
        depth, part, parts = 0, "", []
        for ch in body:
            if ch == "," and depth == 0:
                parts.append(part)
                part = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            part += ch
        parts.append(part)
        for p in parts:
            if p:
                out += go(prefix + head, p)
        return out
    return go("", tree)


def main():
    files = {}
    for dirpath, _, names in os.walk(SRC):
        if os.sep + "bin" in dirpath[len(SRC):]:
            continue
        for n in names:
            if n.endswith(".rs") and n != "tests.rs":
                p = os.path.join(dirpath, n)
                files[module_of(p)] = p
    MODULES.update(files)
    code = {m: strip(open(p).read()) for m, p in files.items()}

    # Re-exports: module -> {name: full path}.
    reexports = {}
    for m, c in code.items():
        for u in re.findall(r"pub(?:\([^)]*\))?\s+use\s+([^;]+);", c):
            for path in expand_use(u):
                last = path.split("::")[-1]
                if " as " in last:
                    continue
                reexports.setdefault(m, {})[last] = resolve_prefix(m, path)

    def resolve(m, segs, depth=0):
        """The module (file) a path names, following re-exports."""
        best = ()
        for k in range(len(segs), -1, -1):
            if tuple(segs[:k]) in files:
                best = tuple(segs[:k])
                rest = segs[k:]
                break
        if rest and depth < 8 and best in reexports and rest[0] in reexports[best]:
            target = reexports[best][rest[0]]
            if target is not None and target[:1] != ("*",):
                return resolve(best, list(target) + rest[1:], depth + 1)
        return best

    edges = {m: set() for m in files}
    for m, c in code.items():
        paths = []
        for u in re.findall(r"\buse\s+([^;]+);", c):
            paths += expand_use(u)
        paths += re.findall(r"\b((?:crate|super|self)(?:::\w+)+)", c)
        for p in paths:
            segs = resolve_prefix(m, p)
            if segs is None:
                continue
            t = resolve(m, list(segs))
            if t != m:
                edges[m].add(t)

    failures = []
    # Circles.
    for scc in tarjan(edges):
        if len(scc) < 2:
            continue
        parent = min(scc, key=len)
        if all(s == parent or (s[:-1] == parent) for s in scc):
            continue
        failures.append(f"import circle among {len(scc)} modules ({', '.join(sorted(name(s) for s in scc))}), e.g. "
                        + " -> ".join(name(s) for s in cycle_in(scc, edges)))
    # raft/ is a layer.
    for m, ts in edges.items():
        if m[:1] == ("raft",):
            for t in ts:
                if t[:1] and t[0] in RAFT_MAY_NOT:
                    failures.append(f"{name(m)} imports {name(t)} (raft/ imports no domain module)")
        elif re.search(r"\bopenraft(_multi)?::", code[m]):
            failures.append(f"{name(m)} names openraft (use the aliases raft/ exports)")
    # Layers.
    for m, ts in edges.items():
        if m == ():
            continue
        for t in ts:
            if t != () and layer_of(t) > layer_of(m):
                failures.append(f"{name(m)} imports {name(t)}, a layer above it (ARCHITECTURE.md)")
    # File sizes and lints, workspace-wide.
    for dirpath, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in ("target", ".git", "node_modules")]
        for n in names:
            if not n.endswith(".rs"):
                continue
            p = os.path.join(dirpath, n)
            text = open(p).read()
            lines = text.count("\n")
            is_test = f"{os.sep}tests{os.sep}" in p or n == "tests.rs"
            limit = MAX_TEST if is_test else MAX_SOURCE
            if lines > limit:
                failures.append(f"{os.path.relpath(p, ROOT)}: {lines} lines (limit {limit})")
            if "clippy::type_complexity" in text:
                failures.append(f"{os.path.relpath(p, ROOT)}: allow(clippy::type_complexity)")

    if "--graph" in sys.argv:
        for m in sorted(edges):
            print(f"{name(m)} -> {', '.join(sorted(name(t) for t in edges[m]))}")
    for f in failures:
        print(f)
    print(f"{len(files)} broker modules, {sum(map(len, edges.values()))} imports: "
          + ("ok" if not failures else f"{len(failures)} violation(s)"))
    return 1 if failures else 0


def resolve_prefix(m, path):
    """The absolute module path segments of `path` written in module `m` (None: external)."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    base = None
    if tuple(m) + (segs[0],) in MODULES:
        base = m
    elif segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base = m
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        return None
    segs = [s.split(" as ")[0] for s in segs if s not in ("*", "self")]
    return tuple(base) + tuple(s for s in segs if re.fullmatch(r"\w+", s))


def tarjan(edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            out.append(scc)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def cycle_in(scc, edges):
    """One cycle through the component that has an edge other than parent-child, for the
    message (the shortest back from such an edge)."""
    inside = set(scc)
    related = lambda u, v: u[:-1] == v or v[:-1] == u
    for u in sorted(scc):
        for v in sorted(edges[u]):
            if v not in inside or related(u, v):
                continue
            # Shortest path v -> u inside the component.
            back, queue = {v: None}, [v]
            while queue:
                w = queue.pop(0)
                if w == u:
                    trail = []  # u, ..., v following the back pointers
                    while w is not None:
                        trail.append(w)
                        w = back[w]
                    return [u] + trail[::-1]
                for x in sorted(edges[w]):
                    if x in inside and x not in back:
                        back[x] = w
                        queue.append(x)
    return sorted(scc)


def name(m):
    return "::".join(m) or "lib"


if __name__ == "__main__":
    sys.exit(main())
