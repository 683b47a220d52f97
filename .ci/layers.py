#!/usr/bin/env python3
"""Checks the module map: no import circle anywhere in the tree, and no
top-level module of the library importing one above it in LAYERS.

Every .rs file under src/ is a node (src/a/mod.rs and src/a.rs are module
`a`; the binaries under src/bin/ are trees of their own). An edge is a path
that names another module of the same tree (`use crate::x`, `crate::x::y`
in code, `super::`, `self::`, a sibling by name after `use`); declaring a
child with `mod x;` is not an edge, and `#[cfg(test)]` modules are left
out (a test may use whatever it tests). Prints every violation and exits 1
if there is any.

  .ci/layers.py            # check
  .ci/layers.py --graph    # also print the edges between top-level modules
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

# The library's top-level modules, lowest first: each may import only the
# ones before it. README.md's Design section explains each line.
LAYERS = [
    ["codec"],
    ["message", "reply"],
    ["engine"],
    ["registry"],
    ["peer"],
    ["tracker"],
    ["utp", "dht", "lpd", "http"],
    ["transport"],
    ["swarm"],
    ["core"],
    ["status"],
    ["commands"],
    ["scripts"],
    ["config"],
    ["service"],
    ["session"],
    ["rpc"],
    ["front"],
    ["access", "notify", "sys"],
    ["server"],
    ["client"],
    ["reactor"],
    ["daemon"],
]


def strip_comments_and_strings(text):
    """Source without comments, string and char literals (kept as ""), so
    that paths in docs or messages are not taken for imports."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            out.append('""')
            i = n if j < 0 else j + len(end)
        elif c == '"' or (c == "b" and text.startswith('b"', i)):
            i += 2 if c == "b" else 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'":
            m = re.match(r"'(\\.|\\x[0-9a-fA-F]{2}|\\u\{[0-9a-fA-F]+\}|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += len(m.group(0))
            else:  # a lifetime
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def drop_test_modules(text):
    """Removes `#[cfg(test)] mod x { ... }` bodies and `#[cfg(test)] mod x;`."""
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*([;{])")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:m.start()])
        if m.group(3) == ";":
            i = m.end()
            continue
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j


def test_children(text):
    return set(re.findall(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text))


class Tree:
    """The modules of one crate: path tuple -> file."""

    def __init__(self, name, root_file):
        self.name = name
        self.files = {}
        self.tests = set()
        self._walk((), root_file)

    def _walk(self, path, file):
        self.files[path] = file
        raw = open(file, encoding="utf-8").read()
        text = strip_comments_and_strings(raw)
        skip = test_children(text)
        base = os.path.dirname(file)
        if not (file.endswith("mod.rs") or file.endswith("lib.rs") or file.endswith("main.rs") or path == ()):
            base = os.path.join(base, os.path.basename(file)[:-3])
        for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", drop_test_modules(text), re.M):
            child = m.group(1)
            for cand in (os.path.join(base, child + ".rs"), os.path.join(base, child, "mod.rs")):
                if os.path.exists(cand):
                    self._walk(path + (child,), cand)
                    break
        for child in skip:
            self.tests.add(path + (child,))

    def resolve(self, path):
        """The longest prefix of `path` that is a module."""
        for k in range(len(path), -1, -1):
            if tuple(path[:k]) in self.files:
                return tuple(path[:k])
        return ()


def use_paths(text):
    """Every module path a file names: `use` trees expanded, and paths in
    code starting with crate::, super:: or self::."""
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths.extend(expand_use(m.group(1).replace("\n", " ")))
    for m in re.finditer(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", text):
        paths.append(m.group(1).split("::"))
    return paths


def expand_use(tree):
    """`a::{b, c::{d, self}}` as [a, b], [a, c, d], [a, c]."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    out = []

    def walk(prefix, t):
        t = t.removeprefix("::")
        brace = t.find("{")
        if brace < 0:
            parts = [p for p in t.split("::") if p]
            if parts and parts[-1] == "self":
                parts = parts[:-1]
            out.append(prefix + parts)
            return
        head = [p for p in t[:brace].split("::") if p]
        inner = t[brace + 1:t.rfind("}")]
        depth, start = 0, 0
        for i, ch in enumerate(inner + ","):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                if inner[start:i]:
                    walk(prefix + head, inner[start:i])
                start = i + 1

    walk([], tree)
    return out


def edges_of(tree):
    edges = set()
    for path, file in tree.files.items():
        if path in tree.tests or any(path[:k] in tree.tests for k in range(len(path))):
            continue
        text = drop_test_modules(strip_comments_and_strings(open(file, encoding="utf-8").read()))
        for p in use_paths(text):
            if not p:
                continue
            here = list(path)
            if p[0] == "crate":
                target = p[1:]
            elif p[0] in ("super", "self"):
                cur = list(path)
                rest = list(p)
                while rest and rest[0] in ("super", "self"):
                    if rest[0] == "super":
                        cur = cur[:-1]
                    rest = rest[1:]
                target = cur + rest
            elif tuple(here + [p[0]]) in tree.files:
                target = here + p  # a child named directly (2018 paths)
            else:
                continue  # std, an external crate, or a local item
            t = tree.resolve(target)
            if t != path:
                edges.add((path, t))
    return edges


def cycles(nodes, edges):
    """Strongly connected components of more than one node."""
    graph = {n: set() for n in nodes}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def name(tree, path):
    return "::".join((tree.name,) + path) if path else tree.name


def main():
    src = os.path.join(ROOT, "src")
    trees = [Tree("crate", os.path.join(src, "lib.rs"))]
    bins = os.path.join(src, "bin")
    for entry in sorted(os.listdir(bins)):
        full = os.path.join(bins, entry)
        root = os.path.join(full, "main.rs") if os.path.isdir(full) else full
        if root.endswith(".rs") and os.path.exists(root):
            trees.append(Tree("bin " + os.path.basename(entry).removesuffix(".rs"), root))
    problems = []
    for tree in trees:
        edges = edges_of(tree)
        # Circles between files, and between the subtrees they belong to
        # at every level (a folder's children are its parts).
        levels = set()
        for a, b in edges:
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            if k < len(a) and k < len(b):
                levels.add((a[:k + 1], b[:k + 1]))
        for comp in cycles(tree.files.keys(), edges | levels):
            problems.append("import circle in %s: %s" % (tree.name, " <-> ".join(name(tree, c) for c in comp)))
        if tree.name != "crate":
            continue
        rank = {}
        for i, layer in enumerate(LAYERS):
            for m in layer:
                rank[m] = i
        tops = {p[0] for p in tree.files if p}
        for m in sorted(tops - set(rank)):
            problems.append("module crate::%s is not in .ci/layers.py's LAYERS" % m)
        top_edges = {(a[0], b[0]) for a, b in edges if a and b and a[0] != b[0]}
        for a, b in sorted(top_edges):
            if a in rank and b in rank and rank[b] >= rank[a]:
                why = "the same layer as" if rank[b] == rank[a] else "above"
                problems.append("crate::%s imports crate::%s, %s it" % (a, b, why))
        if "--graph" in sys.argv:
            for a, b in sorted(top_edges):
                print("%s -> %s" % (a, b))
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print("module map: %d trees, no circles, layers respected" % len(trees))


if __name__ == "__main__":
    main()
