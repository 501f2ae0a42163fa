#!/bin/sh
# Entry point of the compose `triton` services: start tritonserver with the hardening of Triton's
# secure deployment guide. The admin key is read from the compose secret, never from the environment
# or the compose file, and it guards every API that can change or reveal the deployment.
set -eu

KEY_FILE=${TRITON_ADMIN_KEY_FILE:-/run/secrets/triton_admin_key}
if [ ! -s "$KEY_FILE" ]; then
  echo "error: no admin key in $KEY_FILE; create it: umask 077 && openssl rand -hex 32 > secrets/triton_admin_key" >&2
  exit 2
fi
KEY=$(cat "$KEY_FILE")
RESTRICTED="model-repository,model-config,shared-memory,logging,trace,statistics:admin-key=$KEY"

MODE=${TRITON_MODEL_CONTROL_MODE:-none}
case "$MODE" in
  none) LOAD="" ;;
  explicit) LOAD="--load-model=*" ;;  # explicit mode loads nothing by itself
  *) echo "error: TRITON_MODEL_CONTROL_MODE must be none or explicit, not '$MODE' (poll is unsafe in production)" >&2; exit 2 ;;
esac

exec tritonserver \
  --model-repository="${TRITON_MODEL_REPOSITORY:-/models}" \
  --model-control-mode="$MODE" $LOAD \
  --http-restricted-api="$RESTRICTED" \
  --grpc-restricted-protocol="$RESTRICTED" \
  --exit-on-error=true \
  --strict-readiness=true \
  --disable-auto-complete-config \
  --allow-sagemaker=false \
  --allow-vertex-ai=false \
  --trace-config=level=OFF \
  "$@"
