#!/usr/bin/env bash
# `cloud` environments' package templates (issue #15), against baselines
# in the same run (run as root; a release build):
#  - the first build of a `pip: [one small wheel]` environment (created ->
#    packages_build ready) vs `pip install` of the same wheel from the same
#    index straight in a sandbox of the same base;
#  - with that template cached (its warm pool filled), a new session's
#    user message -> its first tool running vs the same for an
#    environment with no packages (the base template), 20 sessions each,
#    interleaved.
# The measurement is `measure_cloud_package_templates` in
# crates/sandstone/tests/builds.rs: it needs the fake internet (its index)
# the tests use. Bounded: 15 minutes at most; the test removes what it made.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
out="$(scripts/build.sh release)"
export SANDSTONE_INIT="$out/sandstone-init"
export SANDSTONE_TEST_DEFAULT="${SANDSTONE_TEST_DEFAULT:-/var/cache/sandstone/setup/templates/default}"
[ -e "$SANDSTONE_TEST_DEFAULT" ] || {
  echo "needs the default template at $SANDSTONE_TEST_DEFAULT (scripts/test.sh makes it)" >&2
  exit 1
}
echo "== cloud package templates; $(nproc) CPUs"
timeout --kill-after=10 900 cargo test --release -q -p sandstone --test builds -- \
  --ignored --nocapture --test-threads 1 measure_cloud_package_templates
