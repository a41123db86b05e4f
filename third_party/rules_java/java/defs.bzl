"""Offline stand-in for @rules_java: the rules are Bazel 4.2.3's built-in ones.

Toolchain resolution loads this file; kormo has no Java code.
"""

java_binary = native.java_binary
java_import = native.java_import
java_library = native.java_library
java_runtime = native.java_runtime
java_toolchain = native.java_toolchain
