"""Repository rule debian_packages: files of pinned Debian packages, without installing them.

  debian_packages(
      name = "debian_faq",
      packages = {"pool/main/d/debian-faq/debian-faq_11.1_all.deb": "<sha256>", ...},
      build_file_content = "...",
  )

Each .deb is downloaded by Bazel (checked against its sha256, kept in the repository cache) from
the first mirror that has it (Debian's pool path, as `apt-cache show PACKAGE=VERSION` prints it
under Filename/SHA256), and unpacked with `dpkg-deb -x` into the repository root, so the package's
files lie at their installed paths (usr/share/...). Nothing is installed on the machine and no
root or apt state is needed.
"""

def _debian_packages_impl(rctx):
    dpkg_deb = rctx.which("dpkg-deb")
    if not dpkg_deb:
        fail("@%s: dpkg-deb (Debian's dpkg) is needed to unpack the pinned .deb files" % rctx.name)
    for pool_path, sha256 in sorted(rctx.attr.packages.items()):
        deb = "debs/" + pool_path.split("/")[-1]
        rctx.report_progress("download " + deb)
        rctx.download(
            url = [mirror + "/" + pool_path for mirror in rctx.attr.mirrors],
            output = deb,
            sha256 = sha256,
        )
        result = rctx.execute([dpkg_deb, "-x", deb, "."])
        if result.return_code != 0:
            fail("@%s: dpkg-deb -x %s failed: %s" % (rctx.name, deb, result.stderr))
        rctx.delete(deb)
    rctx.file("BUILD.bazel", rctx.attr.build_file_content)

debian_packages = repository_rule(
    implementation = _debian_packages_impl,
    doc = "Unpacked files of pinned Debian packages (see the file docstring).",
    attrs = {
        "packages": attr.string_dict(mandatory = True, doc = "Pool path (under a mirror) -> sha256 of the .deb."),
        "mirrors": attr.string_list(
            default = [
                "http://deb.debian.org/debian",
                "https://snapshot.debian.org/archive/debian/20250520T000000Z",
            ],
            doc = "Debian archive roots tried in order (the sha256 makes plain http safe).",
        ),
        "build_file_content": attr.string(mandatory = True),
    },
)
