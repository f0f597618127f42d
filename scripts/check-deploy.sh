#!/usr/bin/env bash
# Checks the deployment files: every Kubernetes manifest against the
# Kubernetes API schemas (kubernetes-validate from PyPI, strict: an unknown
# field fails), the kustomization lists every manifest, and the systemd units
# parse cleanly (systemd-analyze verify; any warning fails).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${SANDSTONE_CACHE:-/var/cache/sandstone}"
venv="$cache/k8s-venv"
# The Kubernetes minor versions the manifests must be valid for: the oldest
# supported and the newest the validator knows.
versions=(1.30.0 1.37.0)
if ! "$venv/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0'
fi
k8s=deploy/kubernetes
mapfile -t manifests < <(find "$k8s" -name '*.yaml' ! -name kustomization.yaml | sort)
for v in "${versions[@]}"; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}"
done
# `kubectl apply -k` applies what the kustomization lists: everything but the
# Secret template, which operators create themselves.
for m in "${manifests[@]}"; do
  name="$(basename "$m")"
  case "$name" in
    *.example.yaml) ! grep -qx "  - $name" "$k8s/kustomization.yaml" || { echo "check-deploy: $name is an example, not a resource" >&2; exit 1; } ;;
    *) grep -qx "  - $name" "$k8s/kustomization.yaml" || { echo "check-deploy: $k8s/kustomization.yaml does not list $name" >&2; exit 1; } ;;
  esac
done
# systemd-analyze checks that ExecStart's binary exists: verify copies that
# point at one that does.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for unit in deploy/systemd/*.service; do
  sed 's#/usr/local/bin/sandstone#/bin/true#' "$unit" > "$tmp/$(basename "$unit")"
done
out="$(systemd-analyze verify --man=no "$tmp"/*.service 2>&1)" || { echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then echo "$out" >&2; exit 1; fi
echo "check-deploy: ${#manifests[@]} manifests valid for Kubernetes ${versions[*]}; $(ls deploy/systemd/*.service | wc -l) systemd units verified"
