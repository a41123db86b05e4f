"""Offline stand-in for @rules_cc: the rules are Bazel 4.2.3's built-in ones.

Bazel's C++ toolchain auto-configuration loads this file; the real rules_cc
release cannot be downloaded offline and Debian's bazel-rules-cc is too new.
"""

cc_binary = native.cc_binary
cc_library = native.cc_library
cc_test = native.cc_test
cc_import = native.cc_import
cc_toolchain = native.cc_toolchain
cc_toolchain_suite = native.cc_toolchain_suite
