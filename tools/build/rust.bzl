"""kormo's own small Rust rules: they call the pinned local rustc directly.

rules_rust cannot be fetched offline, and kormo needs little: rlibs, binaries and
`rustc --test` executables, edition 2021, one optimisation level, third-party crates
from @crates (built by cargo, see crates.bzl). Each target is one rustc action:

  rustc <crate root> --crate-name N (--crate-type rlib | bin | --test) --edition=2021
        -C opt-level=3 --extern dep=path ... -L dependency=<dir of every transitive lib>

Cargo compatibility, so the same sources build under both:
  * CARGO_MANIFEST_DIR is the package path relative to the workspace ("rust/shards"):
    a Bazel test's working directory is the runfiles root, so
    `concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/x")` names the shipped data file;
  * CARGO_PKG_NAME / CARGO_PKG_VERSION / CARGO_CRATE_NAME as cargo sets them;
  * `compile_data`: files read by include_str!/include_bytes! (paths relative to the source);
  * `rustc_env`: extra compile-time variables for env!(); `$(execpath label)` is expanded, and
    a value starting with "${pwd}/" becomes absolute, which include_bytes!(env!(..)) needs
    because rustc resolves relative include paths against the including source file.

GPU tests (tag "gpu"): the test binary exits with code 77 after printing why (no CUDA
device). A generated wrapper turns 77 into a pass that is marked as skipped: it prints
"KORMO-SKIPPED: <target>: <reason>" in the test log, writes a JUnit XML with <skipped/> to
$XML_OUTPUT_FILE and a KORMO-SKIPPED file to $TEST_UNDECLARED_OUTPUTS_DIR; .ci/run counts
those as skipped (Bazel 4 has no skip status of its own).
"""

load("@rust_toolchain//:defs.bzl", "RUSTC")

RustCrateInfo = provider(
    doc = "A compiled Rust library (rlib, or proc-macro shared object).",
    fields = {
        "crate_name": "name used with --extern",
        "output": "File: the .rlib or proc-macro .so",
        "transitive_libs": "depset of Files: this library and every library it needs to link",
    },
)

# Release settings for every crate (the CPU reference trains real models in tests, and
# one setting for libraries, tests and binaries means each library compiles once).
OPT_FLAGS = ["-C", "opt-level=3", "-C", "codegen-units=16", "-C", "debuginfo=0"]

# Tests also check debug_assert! and integer overflow in the crate under test, like cargo's
# test profile does.
TEST_FLAGS = ["-C", "debug-assertions=on", "-C", "overflow-checks=on"]

# Rustc calls the system linker `cc`; nothing else from the caller's PATH is used.
ACTION_ENV = {"PATH": "/usr/bin:/bin"}

# Exit status a GPU test binary uses to say "no CUDA device here" (autotools' skip code).
SKIP_EXIT_CODE = 77

def _dependency_dir(file):
    return "-Ldependency=" + file.dirname

def _shell_quote(text):
    return "'" + text.replace("'", "'\\''") + "'"

def _rustc_env(ctx, crate_name):
    env = dict(ACTION_ENV)
    env.update({
        "CARGO_MANIFEST_DIR": ctx.label.package,
        "CARGO_PKG_NAME": ctx.attr.cargo_pkg_name or crate_name.replace("_", "-"),
        "CARGO_PKG_VERSION": ctx.attr.version,
        "CARGO_CRATE_NAME": crate_name,
    })
    # expand_location rejects a target listed twice (e.g. //configs as compile_data and data).
    targets = {target.label: target for target in ctx.attr.compile_data + ctx.attr.data}.values()
    for key, value in ctx.attr.rustc_env.items():
        env[key] = ctx.expand_location(value, targets) if "$(" in value else value
    return env

def _compile(ctx, crate_name, crate_type, output, extra_flags = []):
    """Registers the rustc action; returns the list of RustCrateInfo of the deps."""
    dep_infos = [dep[RustCrateInfo] for dep in ctx.attr.deps]
    transitive_libs = depset(transitive = [info.transitive_libs for info in dep_infos])

    args = ctx.actions.args()
    args.add(ctx.file.crate_root)
    args.add("--crate-name", crate_name)
    if crate_type == "test":
        args.add("--test")
    else:
        args.add("--crate-type", crate_type)
    args.add("--edition=2021")
    args.add_all(OPT_FLAGS)
    args.add_all(extra_flags)
    args.add("-o", output)
    for info in dep_infos:
        args.add("--extern", "%s=%s" % (info.crate_name, info.output.path))
    args.add_all(transitive_libs, map_each = _dependency_dir, uniquify = True)

    # Variables whose value starts with ${pwd}/ are exported by the shell, made absolute.
    env = _rustc_env(ctx, crate_name)
    exports = []
    for key in sorted(env.keys()):
        if env[key].startswith("${pwd}/"):
            exports.append('export %s="$PWD/"%s' % (key, _shell_quote(env.pop(key)[len("${pwd}/"):])))
    command = "".join([line + "\n" for line in exports]) + _shell_quote(RUSTC) + ' "$@"'

    ctx.actions.run_shell(
        command = command,
        arguments = [args],
        inputs = depset(
            ctx.files.srcs + ctx.files.compile_data + [ctx.file._rustc_version, ctx.file.crate_root],
            transitive = [transitive_libs],
        ),
        outputs = [output],
        env = env,
        mnemonic = "Rustc",
        progress_message = "rustc %s (%s) %s" % (crate_name, crate_type, ctx.label),
    )
    return dep_infos

def _crate_name(ctx):
    return ctx.attr.crate_name or ctx.label.name.replace("-", "_")

def _runfiles(ctx, files):
    runfiles = ctx.runfiles(files = files + ctx.files.data)
    for target in ctx.attr.data:
        runfiles = runfiles.merge(target[DefaultInfo].default_runfiles)
    return runfiles

def _rust_library_impl(ctx):
    crate_name = _crate_name(ctx)
    extension = ".so" if ctx.attr.crate_type == "proc-macro" else ".rlib"
    output = ctx.actions.declare_file("lib%s%s" % (crate_name, extension))
    dep_infos = _compile(ctx, crate_name, ctx.attr.crate_type, output)
    return [
        DefaultInfo(files = depset([output]), runfiles = _runfiles(ctx, [])),
        RustCrateInfo(
            crate_name = crate_name,
            output = output,
            transitive_libs = depset([output], transitive = [info.transitive_libs for info in dep_infos]),
        ),
    ]

def _rust_binary_impl(ctx):
    output = ctx.actions.declare_file(ctx.attr.out or ctx.label.name)
    _compile(ctx, _crate_name(ctx), "bin", output, ["-C", "strip=debuginfo"])
    return [DefaultInfo(executable = output, runfiles = _runfiles(ctx, [output]))]

_SKIP_WRAPPER = """#!/bin/bash
# Generated by //tools/build:rust.bzl for the GPU test {label}: runs the test binary and
# turns its "no CUDA device" exit status ({code}) into a pass marked as skipped.
binary="$(dirname "$0")/{binary}"
"$binary" "$@"
status=$?
if [[ $status -ne {code} ]]; then
    exit $status
fi
reason="no CUDA device"
echo "KORMO-SKIPPED: {label}: $reason"
if [[ -n "${{TEST_UNDECLARED_OUTPUTS_DIR:-}}" ]]; then
    echo "$reason" > "$TEST_UNDECLARED_OUTPUTS_DIR/KORMO-SKIPPED"
fi
if [[ -n "${{XML_OUTPUT_FILE:-}}" ]]; then
    cat > "$XML_OUTPUT_FILE" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="1" failures="0" errors="0" skipped="1">
  <testsuite name="{label}" tests="1" failures="0" errors="0" skipped="1">
    <testcase name="{label}" classname="{label}"><skipped message="$reason"/></testcase>
  </testsuite>
</testsuites>
XML
fi
exit 0
"""

def _rust_test_impl(ctx):
    crate_name = _crate_name(ctx)
    if "gpu" not in ctx.attr.tags:
        output = ctx.actions.declare_file(ctx.label.name)
        _compile(ctx, crate_name, "test", output, TEST_FLAGS)
        executable = output
        files = [output]
    else:
        output = ctx.actions.declare_file(ctx.label.name + ".bin")
        _compile(ctx, crate_name, "test", output, TEST_FLAGS)
        executable = ctx.actions.declare_file(ctx.label.name)
        ctx.actions.write(executable, _SKIP_WRAPPER.format(
            label = str(ctx.label),
            binary = output.basename,
            code = SKIP_EXIT_CODE,
        ), is_executable = True)
        files = [executable, output]
    # Also at run time, for tests that read std::env::var("CARGO_MANIFEST_DIR").
    env = {"CARGO_MANIFEST_DIR": ctx.label.package, "RUST_BACKTRACE": "1"}
    for key, value in ctx.attr.env.items():
        env[key] = ctx.expand_location(value, ctx.attr.data)
    return [
        DefaultInfo(executable = executable, runfiles = _runfiles(ctx, files)),
        testing.TestEnvironment(env),
    ]

_COMMON_ATTRS = {
    "srcs": attr.label_list(allow_files = [".rs"], doc = "All .rs files of the crate (module files included)."),
    "crate_root": attr.label(allow_single_file = [".rs"], mandatory = True),
    "crate_name": attr.string(doc = "Defaults to the target name with - replaced by _."),
    "cargo_pkg_name": attr.string(doc = "CARGO_PKG_NAME; defaults to the crate name with _ replaced by -."),
    "version": attr.string(default = "0.1.0", doc = "CARGO_PKG_VERSION."),
    "deps": attr.label_list(providers = [RustCrateInfo]),
    "compile_data": attr.label_list(allow_files = True, doc = "Files read at compile time (include_str!, include_bytes!)."),
    "rustc_env": attr.string_dict(doc = "Extra compile-time environment ($(execpath) expanded; ${pwd}/ prefix made absolute)."),
    "data": attr.label_list(allow_files = True, doc = "Run-time files, shipped in runfiles."),
    "_rustc_version": attr.label(default = "@rust_toolchain//:version.txt", allow_single_file = True),
}

rust_library = rule(
    implementation = _rust_library_impl,
    attrs = dict(_COMMON_ATTRS, crate_type = attr.string(default = "rlib", values = ["rlib", "proc-macro"])),
)

rust_binary = rule(
    implementation = _rust_binary_impl,
    attrs = dict(_COMMON_ATTRS, out = attr.string(doc = "Output file name (default: the target name).")),
    executable = True,
)

rust_test = rule(
    implementation = _rust_test_impl,
    attrs = dict(_COMMON_ATTRS, env = attr.string_dict(
        doc = "Run-time environment; $(rootpath label) of a `data` file is expanded (runfiles-relative, the test's working directory).",
    )),
    test = True,
)

def _rust_import_impl(ctx):
    return [
        DefaultInfo(files = depset([ctx.file.lib])),
        RustCrateInfo(
            crate_name = ctx.attr.crate_name,
            output = ctx.file.lib,
            transitive_libs = depset(ctx.files.lib_dir),
        ),
    ]

rust_import = rule(
    implementation = _rust_import_impl,
    doc = "A library built elsewhere (by cargo, in @crates): its rlib/.so and the folder of everything it links.",
    attrs = {
        "crate_name": attr.string(mandatory = True),
        "lib": attr.label(allow_single_file = [".rlib", ".so"], mandatory = True),
        "lib_dir": attr.label_list(allow_files = True, doc = "Every library in the folder of `lib` (its transitive dependencies)."),
    },
)
