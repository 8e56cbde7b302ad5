# Shared by the guide's shell scripts: run a stackops task of this checkout.
# STACKOPS_ENV picks the environment (dev, test, prod; default: stackops.default_env from invoke.yaml).
# Sourced, not run.
STACKOPS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stackops() {
    local task="$1"
    shift
    local env_args=()
    if [ -n "${STACKOPS_ENV:-}" ]; then
        env_args=(--env "$STACKOPS_ENV")
    fi
    "${STACKOPS_PYTHON:-python3}" -m invoke -r "$STACKOPS_ROOT" "$task" "${env_args[@]}" "$@"
}
