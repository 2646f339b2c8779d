#!/usr/bin/env bash
# Roll Haven's services back, from a manager node:
#
#   stack/rollback.sh            every Haven service back to its previous spec (one step)
#   stack/rollback.sh api llm    only these services
#
# Swarm already rolls a service back by itself when its update fails (docker-stack.yml); this
# is for a release that deployed healthy but misbehaves. To go back further than one step,
# deploy the older tag: IMAGE_TAG=<old> stack/deploy.sh.
# The database schema is not downgraded: migrations are expand/contract, so the previous
# version runs on the current schema.
set -euo pipefail

STACK_NAME=${STACK_NAME:-haven}
# The stores are left alone: their images change rarely and deliberately.
services=("$@")
if ((${#services[@]} == 0)); then
  services=(nginx api worker beat emb llm)
fi

status=0
for name in "${services[@]}"; do
  service="${STACK_NAME}_${name}"
  if ! docker service inspect "$service" >/dev/null 2>&1; then
    echo "rollback: no service ${service}" >&2
    status=1
    continue
  fi
  if [[ -z $(docker service inspect "$service" --format '{{if .PreviousSpec}}yes{{end}}') ]]; then
    echo "rollback: ${service} has no previous version; skipped"
    continue
  fi
  echo "rollback: ${service}"
  docker service rollback --detach=false "$service" || status=1
done
exit "$status"
