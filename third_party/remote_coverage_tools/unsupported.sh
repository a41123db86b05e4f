#!/bin/bash
# Coverage needs the real remote_coverage_tools, which cannot be fetched offline.
echo "kormo: 'bazel coverage' is not supported (offline stand-in for @remote_coverage_tools)" >&2
exit 1
