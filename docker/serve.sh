#!/bin/sh
# Entry point of the compose `triton` services: start tritonserver with the hardening of Triton's
# secure deployment guide. The admin key is read from the compose secret, never from the environment
# or the compose file, and it guards every API that can change or reveal the deployment.
set -eu

KEY_FILE=${TRITON_ADMIN_KEY_FILE:-/run/secrets/triton_admin_key}
HOW="create it: openssl rand -hex 32 > secrets/triton_admin_key (see secrets/README.md)"
if [ ! -e "$KEY_FILE" ]; then
  echo "error: no admin key in $KEY_FILE; $HOW" >&2
  exit 2
fi
if [ ! -r "$KEY_FILE" ]; then
  echo "error: $KEY_FILE is not readable by uid $(id -u); compose mounts the file with its host owner and mode:" \
       "chgrp $(id -g) secrets/triton_admin_key && chmod 0440 secrets/triton_admin_key" >&2
  exit 2
fi
KEY=$(tr -d '\r\n' < "$KEY_FILE")
if [ "${#KEY}" -lt 32 ]; then
  echo "error: the admin key in $KEY_FILE has ${#KEY} characters; use at least 32 ($HOW)" >&2
  exit 2
fi
RESTRICTED="model-repository,model-config,shared-memory,logging,trace,statistics:admin-key=$KEY"

# gRPC over TLS when the TLS folder (secrets/tls, mounted read-only) holds server.crt and server.key;
# with ca.crt too, clients must present a certificate that CA signed (mutual TLS).
TLS_DIR=${TRITON_GRPC_TLS_DIR:-/opt/bundle/tls}
TLS=""
if [ -f "$TLS_DIR/server.crt" ] || [ -f "$TLS_DIR/server.key" ]; then
  if [ ! -r "$TLS_DIR/server.crt" ] || [ ! -r "$TLS_DIR/server.key" ]; then
    echo "error: gRPC TLS needs $TLS_DIR/server.crt and server.key, readable by uid $(id -u)" >&2
    exit 2
  fi
  TLS="--grpc-use-ssl=true --grpc-server-cert=$TLS_DIR/server.crt --grpc-server-key=$TLS_DIR/server.key"
  if [ -f "$TLS_DIR/ca.crt" ]; then
    TLS="$TLS --grpc-root-cert=$TLS_DIR/ca.crt --grpc-use-ssl-mutual=true"
  fi
fi

# Cap an HTTP request's size where the release has the option (scripts/constants.py says why):
# an older server without it would refuse to start on an unknown flag.
LIMITS=""
if tritonserver --help 2>&1 | grep -q -- '--http-max-input-size'; then
  LIMITS="--http-max-input-size=67108864"
fi

MODE=${TRITON_MODEL_CONTROL_MODE:-none}
case "$MODE" in
  none) LOAD="" ;;
  explicit) LOAD="--load-model=*" ;;  # explicit mode loads nothing by itself
  *) echo "error: TRITON_MODEL_CONTROL_MODE must be none or explicit, not '$MODE' (poll is unsafe in production)" >&2; exit 2 ;;
esac

exec tritonserver \
  --model-repository="${TRITON_MODEL_REPOSITORY:-/models}" \
  --model-control-mode="$MODE" $LOAD $TLS $LIMITS \
  --http-restricted-api="$RESTRICTED" \
  --grpc-restricted-protocol="$RESTRICTED" \
  --exit-on-error=true \
  --strict-readiness=true \
  --disable-auto-complete-config \
  --allow-sagemaker=false \
  --allow-vertex-ai=false \
  --trace-config=level=OFF \
  --metrics-config=summary_latencies=true \
  "$@"
