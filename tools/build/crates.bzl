"""Repository rule @crates: third-party Rust crates, fetched and built ONLY by cargo.

The root Cargo.toml ([workspace.dependencies]) and Cargo.lock are the single source of
truth for third-party code. This rule:

 1. writes a throwaway cargo workspace with the verbatim [workspace.dependencies] table and
    one package depending (`workspace = true`) on every entry some member uses (per
    Cargo.lock), plus the features members add, and copies the root Cargo.lock next to it,
    so cargo keeps every pinned version;
 2. runs `cargo build --release --message-format=json` with a fixed CARGO_TARGET_DIR under
    $HOME, so a new output base (a fresh clone elsewhere) reuses cargo's compiled artifacts;
 3. checks that every registry package in the resulting lock has exactly the version and
    checksum of the root Cargo.lock (otherwise: stop, and tell the user to run cargo at the
    root so Cargo.lock pins the change);
 4. copies the compiled libraries (rlibs, proc-macro .so's) into deps/ and exposes each
    direct dependency as @crates//:<name> (see rust_import in rust.bzl).

Root Cargo.toml/Cargo.lock and the members' Cargo.toml are read through labels, so the
rule reruns when they change. Cargo unifies features across the workspace, and so does
@crates: every crate is built once, with the union of the features members ask for.
"""

load("//tools/build:toolchain.bzl", "find_rust_sysroot")

_PACKAGE_NAME = "kormo-bazel-crates"

def _workspace_dependencies(toml_text):
    """[(name, verbatim entry)] of the [workspace.dependencies] table."""
    entries = []
    in_table = False
    pending = ""
    for raw in toml_text.splitlines():
        line = raw.strip()
        if not pending and line.startswith("["):
            if line.startswith("[workspace.dependencies."):
                fail("Cargo.toml: write [workspace.dependencies] entries inline (name = {...}); the table form %s is not supported by tools/build/crates.bzl" % line)
            in_table = line == "[workspace.dependencies]"
            continue
        if not in_table or (not pending and (not line or line.startswith("#"))):
            continue
        pending = (pending + "\n" + raw) if pending else raw

        # An entry may span lines (features = [ ... ]): wait until brackets balance.
        if pending.count("{") == pending.count("}") and pending.count("[") == pending.count("]"):
            name = pending.split("=", 1)[0].strip().strip('"')
            entries.append((name, pending))
            pending = ""
    if pending:
        fail("Cargo.toml: unterminated [workspace.dependencies] entry: " + pending)
    return entries

def _lock_packages(lock_text):
    """Cargo.lock's [[package]] tables as dicts (name, version, source, checksum, dependencies).

    A dependency is "name", or "name version" when the lock holds several versions of it.
    """
    packages = []
    current = None
    in_deps = False
    for raw in lock_text.splitlines():
        line = raw.strip()
        if line == "[[package]]":
            current = {"dependencies": []}
            packages.append(current)
            in_deps = False
        elif current == None or not line or line.startswith("#"):
            continue
        elif in_deps:
            if line.startswith("]"):
                in_deps = False
            else:
                current["dependencies"].append(line.strip(",").strip('"'))
        elif line.startswith("dependencies = ["):
            in_deps = not line.endswith("]")
            if not in_deps:
                inline = line[len("dependencies = ["):-1]
                current["dependencies"].extend([d.strip().strip('"') for d in inline.split(",") if d.strip()])
        elif line.startswith("["):
            current = None  # [metadata] or similar (older lock formats)
        elif "=" in line:
            key, value = line.split("=", 1)
            current[key.strip()] = value.strip().strip('"')
    return packages

def _package_from_id(package_id):
    """(name, version) of a cargo package id.

    "registry+https://github.com/rust-lang/crates.io-index#serde@1.0.228" (cargo >= 1.77) or
    "serde 1.0.228 (registry+https://...)" (older cargo).
    """
    if "#" in package_id:
        tail = package_id.split("#", 1)[1]
        if "@" in tail:
            name, version = tail.split("@", 1)
            return (name, version)
        return (package_id.split("#", 1)[0].split("/")[-1], tail)
    words = package_id.split(" ")
    return (words[0], words[1] if len(words) > 1 else "")

def _run_cargo(rctx, cargo, env, manifest):
    base = [cargo, "build", "--release", "--message-format=json", "--manifest-path", manifest]

    # Offline first: no network when ~/.cargo already holds every pinned crate.
    result = rctx.execute(base + ["--offline"], environment = env, timeout = 3600, quiet = True)
    if result.return_code == 0:
        return result
    rctx.report_progress("cargo build (downloading crates)")
    result = rctx.execute(base, environment = env, timeout = 3600, quiet = True)
    if result.return_code != 0:
        fail("@crates: `cargo build` of the third-party crates failed:\n" + result.stderr[-4000:])
    return result

def _toml_sections(text):
    """[(section header, line)] for every non-comment line of a TOML file."""
    section = ""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.split("#", 1)[0].strip()
            continue
        out.append((section, line))
    return out

def _string_list(text):
    """["a", "b"] -> ["a", "b"] (a TOML array of plain strings)."""
    return [item.strip().strip('"') for item in text.strip().strip("[]").split(",") if item.strip()]

def _member_features(rctx, toml_text):
    """{dependency: [features]} that workspace members add to `x = { workspace = true, features = [...] }`."""
    members = []
    in_members = False
    for section, line in _toml_sections(toml_text):
        if section != "[workspace]":
            continue
        if line.startswith("members"):
            in_members = not line.endswith("]")
            members.extend(_string_list(line.split("=", 1)[1]))
        elif in_members:
            in_members = not line.endswith("]")
            members.extend(_string_list(line))
    features = {}
    workspace = rctx.path(Label("//:Cargo.toml")).dirname
    for member in members:
        # Through a label (so edits rerun this rule) once the member is a Bazel package; a new
        # member without BUILD.bazel is still read, and cargo_bazel_deps_test reports it.
        manifest = rctx.path("%s/%s/Cargo.toml" % (workspace, member))
        if not manifest.exists:
            continue  # cargo itself reports a member without Cargo.toml
        if rctx.path("%s/%s/BUILD.bazel" % (workspace, member)).exists:
            text = rctx.read(Label("//%s:Cargo.toml" % member))
        else:
            text = rctx.read(manifest)
        for section, line in _toml_sections(text):
            if not section.endswith("dependencies]") or "features" not in line or "{" not in line:
                continue
            name = line.split("=", 1)[0].strip().strip('"')
            listed = line.split("features", 1)[1].split("[", 1)[1].split("]", 1)[0]
            for feature in _string_list(listed):
                if feature not in features.setdefault(name, []):
                    features[name].append(feature)
    return features

def _crates_impl(rctx):
    root_lock_path = rctx.path(Label("//:Cargo.lock"))
    toml_text = rctx.read(Label("//:Cargo.toml"))
    lock_text = rctx.read(root_lock_path)
    root_packages = _lock_packages(lock_text)

    # Direct dependencies that some workspace member (a lock package without source) uses.
    used = {}
    for package in root_packages:
        if "source" not in package:
            for dep in package["dependencies"]:
                used[dep.split(" ")[0]] = True
    all_entries = _workspace_dependencies(toml_text)
    entries = [(name, entry) for name, entry in all_entries if name in used]

    # Members may add features; cargo unifies them, so the one Bazel build has their union.
    extra_features = _member_features(rctx, toml_text)
    dependencies = []
    for name, _ in entries:
        features = extra_features.get(name, [])
        dependencies.append("%s = { workspace = true%s }" % (
            name,
            ", features = [%s]" % ", ".join(['"%s"' % f for f in features]) if features else "",
        ))

    project = "cargo_project"
    rctx.file(project + "/Cargo.toml", "\n".join([
        "# Generated by //tools/build:crates.bzl from the root Cargo.toml; do not edit.",
        "[workspace]",
        "",
        "[workspace.dependencies]",
    ] + [entry for _, entry in all_entries] + [
        "",
        "[package]",
        'name = "%s"' % _PACKAGE_NAME,
        'version = "0.0.0"',
        'edition = "2021"',
        "publish = false",
        "",
        "[lib]",
        'path = "lib.rs"',
        "",
        "[dependencies]",
    ] + dependencies + [
        "",
        "[profile.release]",
        "opt-level = 3",
        "debug = false",
        "codegen-units = 16",
        "",
    ]))
    rctx.file(project + "/lib.rs", "// Generated: the crates are the point, not this library.\n")
    rctx.file(project + "/Cargo.lock", lock_text)

    sysroot = find_rust_sysroot(rctx)
    home = rctx.os.environ.get("HOME", "/root")
    cargo_home = rctx.os.environ.get("CARGO_HOME", home + "/.cargo")
    target_dir = rctx.os.environ.get("KORMO_CARGO_TARGET_DIR", home + "/.cache/kormo/cargo-target")

    # Paths of crate sources and build-script outputs end up in the rlibs; mapping them to fixed
    # names makes the rlibs identical whatever $HOME/$CARGO_HOME is, so every Rust action's
    # cache key is too (a shared disk/remote cache then serves other machines and users).
    rustflags = "\037".join([
        "--remap-path-prefix=%s/registry/src=/cargo/registry/src" % cargo_home,
        "--remap-path-prefix=%s=/cargo/target" % target_dir,
    ])
    env = {
        "CARGO_TARGET_DIR": target_dir,
        "RUSTC": sysroot + "/bin/rustc",
        "RUSTFLAGS": "",
        "CARGO_ENCODED_RUSTFLAGS": rustflags,
        "CARGO_BUILD_RUSTFLAGS": "",
        "CARGO_INCREMENTAL": "0",
        "CARGO_TERM_COLOR": "never",
    }
    rctx.report_progress("cargo build --release (third-party crates)")
    result = _run_cargo(rctx, sysroot + "/bin/cargo", env, str(rctx.path(project + "/Cargo.toml")))

    # The resolution must be exactly the root lock's.
    resolved = _lock_packages(rctx.read(project + "/Cargo.lock"))
    pinned = {}
    for package in root_packages:
        if "source" in package:
            pinned[(package["name"], package["version"])] = package.get("checksum", "")
    drift = []
    for package in resolved:
        if "source" not in package:
            continue
        key = (package["name"], package["version"])
        if key not in pinned:
            drift.append("%s %s is not in Cargo.lock" % key)
        elif pinned[key] != package.get("checksum", ""):
            drift.append("%s %s has checksum %s, Cargo.lock says %s" % (key[0], key[1], package.get("checksum", ""), pinned[key]))
    if drift:
        fail("@crates: the third-party crates Bazel would build differ from the root Cargo.lock:\n  " +
             "\n  ".join(drift) +
             "\nRun `cargo build` (or `cargo update -p <crate>`) at the repository root so Cargo.lock " +
             "pins the [workspace.dependencies] you use, then rerun Bazel.")

    # Libraries from cargo's JSON messages (exactly this build's, not stale target-dir files).
    libs = {}  # (package name, version) -> (crate name, file basename)
    files = []
    for line in result.stdout.splitlines():
        if not line.startswith("{"):
            continue
        message = json.decode(line)
        if message.get("reason") != "compiler-artifact":
            continue
        kinds = message["target"]["kind"]
        if "custom-build" in kinds:
            continue
        package = _package_from_id(message["package_id"])
        if package[0] == _PACKAGE_NAME:
            continue
        for path in message["filenames"]:
            if path.endswith(".rlib") or ("proc-macro" in kinds and path.endswith(".so")):
                files.append(path)
                libs[package] = (message["target"]["name"].replace("-", "_"), path.split("/")[-1])
    rctx.execute(["mkdir", "-p", "deps"])
    copy = rctx.execute(["cp", "-f"] + files + ["deps/"])
    if copy.return_code != 0:
        fail("@crates: copying cargo's libraries failed: " + copy.stderr)

    build = [
        "# Generated by //tools/build:crates.bzl from the root Cargo.toml and Cargo.lock; do not edit.",
        'load("@//tools/build:rust.bzl", "rust_import")',
        "",
        'package(default_visibility = ["//visibility:public"])',
        "",
        'filegroup(name = "libs", srcs = glob(["deps/*"]))',
        "",
    ]
    # The version of each direct dependency, as the throwaway package's lock entry names it
    # (other versions of the same crate may be in the graph as transitive dependencies).
    versions = {}
    for package in resolved:
        versions.setdefault(package["name"], []).append(package["version"])
    direct = {}
    for package in resolved:
        if package["name"] == _PACKAGE_NAME:
            for dep in package["dependencies"]:
                words = dep.split(" ")
                direct[words[0]] = words[1] if len(words) > 1 else versions[words[0]][0]
    for name, _ in entries:
        key = (name, direct.get(name, ""))
        if key not in libs:
            fail("@crates: cargo built no library for %s %s (is it a [workspace.dependencies] entry with a `package = ` rename?)" % key)
        crate_name, basename = libs[key]
        build.append('rust_import(name = "%s", crate_name = "%s", lib = "deps/%s", lib_dir = [":libs"])' % (name, crate_name, basename))
    rctx.file("BUILD.bazel", "\n".join(build) + "\n")
    rctx.file("WORKSPACE", 'workspace(name = "crates")\n')

cargo_crates = repository_rule(
    implementation = _crates_impl,
    environ = ["HOME", "PATH", "CARGO_HOME", "RUSTUP_HOME", "KORMO_CARGO_TARGET_DIR"],
)
