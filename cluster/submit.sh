#!/usr/bin/env bash
# Submit a PageRL recipe to a Ray cluster as a job, with token authentication.
#   cluster/submit.sh http://HEAD:8265 recipes/quickstart.yaml [overrides...]
# The token is read by Ray from RAY_AUTH_TOKEN or ~/.ray/auth_token (or RAY_AUTH_TOKEN_PATH).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DASHBOARD_ADDRESS RECIPE [section.key=value ...]" >&2
  exit 2
fi
address=$1; shift
cd "$(dirname "$0")/.."
RAY_AUTH_MODE=token exec ray job submit --address "$address" --working-dir . -- pagerl run "$@"
