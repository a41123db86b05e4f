#!/usr/bin/env python3
"""Checks that the Bazel and Cargo builds of kormo declare the same crates and dependencies.

Cargo reads rust/<dir>/Cargo.toml; Bazel reads rust/<dir>/BUILD.bazel (a kormo_crate call,
tools/build/crate.bzl). Nothing generates one from the other, so this test keeps them from
drifting: every workspace member must have a BUILD.bazel whose `cargo_name`, `deps` and
`dev_deps` mirror its [package] name, [dependencies] and [dev-dependencies]
(path dependency ../x -> "//rust/x", `x.workspace = true` -> "@crates//:x"), and crate.bzl's
WORKSPACE_VERSION must equal [workspace.package] version. [build-dependencies] are not
mirrored: Bazel does what build scripts do (e.g. the CUDA fatbin) with its own rules.

Run from the workspace root or a runfiles root (as the Bazel test does); file paths are
relative to it. Exits 1 listing every mismatch. With --fix (run from the workspace root:
`python3 tools/build/check_cargo_bazel_deps.py --fix`) it rewrites the deps/dev_deps lists
of the BUILD.bazel files to match Cargo.toml instead.
"""

import ast
import os
import re
import sys
import tomllib


def read_toml(path):
    with open(path, "rb") as f:
        return tomllib.load(f)


def expected_labels(member, table, errors, cargo_path):
    """Bazel labels for a Cargo dependency table."""
    labels = set()
    for name, spec in sorted(table.items()):
        if isinstance(spec, dict) and "path" in spec:
            target = os.path.normpath(os.path.join(member, spec["path"]))
            labels.add("//" + target)
        elif isinstance(spec, dict) and spec.get("workspace") is True:
            labels.add("@crates//:" + name)
        else:
            errors.append(
                f"{cargo_path}: dependency '{name}' must be `{name}.workspace = true` "
                "(third-party versions live in the root [workspace.dependencies]) or a path dependency"
            )
    return labels


def format_list(labels):
    return "[\n" + "".join(f'        "{label}",\n' for label in sorted(labels)) + "    ]"


def rewrite_lists(build_path, call, wanted):
    """Rewrites (or adds) the keyword arguments of `wanted` {name: labels} in the call's text."""
    with open(build_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    present = {keyword.arg: keyword.value for keyword in call.keywords}
    # Replace from the bottom up so earlier positions stay valid.
    edits = []
    for name, labels in wanted.items():
        if name in present:
            node = present[name]
            edits.append((node.lineno, node.col_offset, node.end_lineno, node.end_col_offset, format_list(labels)))
        elif labels:
            anchor = present.get("cargo_name") or call.func
            edits.append((anchor.end_lineno, None, None, None, f"    {name} = {format_list(labels)},"))
    for start_line, start_col, end_line, end_col, text in sorted(edits, key=lambda e: (e[0], e[1] or 0), reverse=True):
        if start_col is None:
            lines.insert(start_line, text)
        else:
            first, last = lines[start_line - 1], lines[end_line - 1]
            lines[start_line - 1 : end_line] = (first[:start_col] + text + last[end_col:]).split("\n")
    with open(build_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def kormo_crate_call(build_path, errors):
    """The kormo_crate(...) call node of a BUILD.bazel and its keyword arguments as Python values."""
    with open(build_path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=build_path)
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "kormo_crate"
    ]
    if len(calls) != 1:
        errors.append(f"{build_path}: expected exactly one kormo_crate(...) call, found {len(calls)}")
        return None, None
    arguments = {}
    for keyword in calls[0].keywords:
        if keyword.arg in ("cargo_name", "deps", "dev_deps", "bins"):
            try:
                arguments[keyword.arg] = ast.literal_eval(keyword.value)
            except ValueError:
                errors.append(f"{build_path}: `{keyword.arg}` must be a literal (string or list of strings)")
    return calls[0], arguments


def check_member(member, errors, fix):
    cargo_path = os.path.join(member, "Cargo.toml")
    build_path = os.path.join(member, "BUILD.bazel")
    if not os.path.exists(build_path) or not os.path.exists(cargo_path):
        errors.append(
            f"workspace member {member}: no {build_path} (or Cargo.toml) in this test's data; "
            f"create {build_path} with a kormo_crate(...) call and add it to CRATES in tools/build/BUILD.bazel"
        )
        return
    cargo = read_toml(cargo_path)
    call, arguments = kormo_crate_call(build_path, errors)
    if arguments is None:
        return
    fixes = {}
    package_name = cargo.get("package", {}).get("name")
    if arguments.get("cargo_name") != package_name:
        errors.append(f"{build_path}: cargo_name = {arguments.get('cargo_name')!r}, but {cargo_path} says name = {package_name!r}")
    # [[bin]] names of src/main.rs and src/bin/<stem>.rs must be what kormo_crate's `bins` says.
    want_bins = {}
    for binary in cargo.get("bin", []):
        path = binary.get("path", "")
        stem = "main" if path == "src/main.rs" else os.path.splitext(os.path.basename(path))[0]
        default = package_name if stem == "main" else stem
        if path and binary.get("name") != default:
            want_bins[stem] = binary["name"]
    have_bins = {stem: name for stem, name in arguments.get("bins", {}).items()}
    if {k: v for k, v in have_bins.items() if v != (package_name if k == "main" else k)} != want_bins:
        errors.append(f"{build_path}: bins = {have_bins!r}, but the [[bin]] tables of {cargo_path} say {want_bins!r}")
    for cargo_table, bazel_argument in (("dependencies", "deps"), ("dev-dependencies", "dev_deps")):
        want = expected_labels(member, cargo.get(cargo_table, {}), errors, cargo_path)
        have = set(arguments.get(bazel_argument, []))
        if want != have and fix:
            fixes[bazel_argument] = want
        elif want != have:
            missing = ", ".join(f'"{label}"' for label in sorted(want - have)) or "none"
            extra = ", ".join(f'"{label}"' for label in sorted(have - want)) or "none"
            errors.append(
                f"{build_path}: {bazel_argument} differ from [{cargo_table}] in {cargo_path}: "
                f"missing {missing}; not in Cargo.toml {extra}.\n"
                f"    expected: {bazel_argument} = {sorted(want)!r}\n"
                "    (python3 tools/build/check_cargo_bazel_deps.py --fix rewrites them)"
            )
    if fixes:
        rewrite_lists(build_path, call, fixes)
        print(f"fixed {build_path}: {', '.join(sorted(fixes))}")


def main():
    fix = "--fix" in sys.argv[1:]
    errors = []
    root = read_toml("Cargo.toml")
    members = root.get("workspace", {}).get("members", [])
    if not members:
        errors.append("Cargo.toml: no [workspace] members")
    for member in members:
        check_member(member, errors, fix)

    version = root.get("workspace", {}).get("package", {}).get("version")
    with open("tools/build/crate.bzl", encoding="utf-8") as f:
        match = re.search(r'^WORKSPACE_VERSION = "([^"]*)"', f.read(), re.MULTILINE)
    if not match or match.group(1) != version:
        errors.append(
            f"tools/build/crate.bzl: WORKSPACE_VERSION {match.group(1) if match else '(missing)'!r} "
            f"differs from [workspace.package] version {version!r} in Cargo.toml"
        )

    if errors:
        print("Cargo and Bazel builds disagree:\n" + "\n".join("  " + e for e in errors))
        return 1
    print(f"ok: {len(members)} workspace members, Cargo.toml and BUILD.bazel agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
