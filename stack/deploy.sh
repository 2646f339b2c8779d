#!/usr/bin/env bash
# Deploy (or upgrade) Haven on Swarm, from a manager node:
#
#   IMAGE_TAG=1.4.0 JWT_ACTIVE_KID=2026-01 PUBLIC_URL=https://haven.example.org stack/deploy.sh
#
# Environment:
#   IMAGE_TAG        Haven's image tag to run (required)
#   JWT_ACTIVE_KID   the kid in the haven_jwt_keys secret that signs new tokens (required)
#   PUBLIC_URL       the address clients reach nginx at; presigned URLs are signed for it
#                    (required)
#   BACKUP_S3_ENDPOINT  the S3 endpoint nightly backups go to, not on the storage node
#                    (required; BACKUP_S3_BUCKET, BACKUP_S3_ACCESS_KEY, BACKUP_S3_SECURE too)
#   IMAGE_REGISTRY   registry the nodes pull from (default registry.local:5000)
#   STACK_NAME       default haven
#   SMOKE_URL, SMOKE_TOKEN   when both are set, stack/smoke.sh runs after the deploy
#
# Swarm rolls each service forward start-first and rolls it back by itself when a new task
# fails its health check within the monitor window (docker-stack.yml). This script checks what
# Swarm cannot (secrets, node labels), versions the configs, waits for the migration job, and
# fails when any service ended up rolled back.
# Migrations must be expand/contract: during a rolling update the old and the new API run
# side by side on the migrated schema, and a rollback does not downgrade the schema.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${IMAGE_TAG:?set IMAGE_TAG}"
: "${JWT_ACTIVE_KID:?set JWT_ACTIVE_KID}"
: "${PUBLIC_URL:?set PUBLIC_URL, the address clients reach Haven at}"
: "${BACKUP_S3_ENDPOINT:?set BACKUP_S3_ENDPOINT, the backup store off the storage node}"
export IMAGE_TAG JWT_ACTIVE_KID PUBLIC_URL BACKUP_S3_ENDPOINT
export IMAGE_REGISTRY=${IMAGE_REGISTRY:-registry.local:5000}
STACK_NAME=${STACK_NAME:-haven}
JOB_TIMEOUT=${JOB_TIMEOUT:-900}

log() { echo "deploy: $*"; }
die() { echo "deploy: $*" >&2; exit 1; }

# --- preconditions ----------------------------------------------------------------------------
secrets=(haven_jwt_keys haven_database_url haven_postgres_password haven_broker_url
         haven_rabbitmq_conf haven_s3_secret_key haven_backup_s3_secret_key)
missing=()
for secret in "${secrets[@]}"; do
  docker secret inspect "$secret" >/dev/null 2>&1 || missing+=("$secret")
done
if ((${#missing[@]})); then
  cat >&2 <<HELP
deploy: missing secrets: ${missing[*]}
Create each once, from a file or stdin, e.g.:
  printf '%s' '{"2026-01": "<at least 32 random characters>"}' | docker secret create haven_jwt_keys -
  printf '%s' 'postgresql+psycopg://haven:<pw>@postgres:5432/haven' | docker secret create haven_database_url -
  printf '%s' '<pw>'                                       | docker secret create haven_postgres_password -
  printf '%s' 'amqp://haven:<pw2>@rabbitmq:5672//'          | docker secret create haven_broker_url -
  printf 'default_user = haven\ndefault_pass = <pw2>\n'     | docker secret create haven_rabbitmq_conf -
  printf '%s' '<S3 secret key, also MinIO root password>'   | docker secret create haven_s3_secret_key -
  printf '%s' '<secret key of the backup S3 store>'         | docker secret create haven_backup_s3_secret_key -
HELP
  exit 1
fi
for role in compute storage; do
  [[ -n $(docker node ls -q --filter "node.label=role=${role}") ]] \
    || die "no node labelled role=${role}: docker node update --label-add role=${role} <node>"
done

# --- configs: immutable in Swarm, so their names carry a digest of the content ---------------
digest() { sha256sum "$1" | cut -c1-12; }
export NGINX_CONF_DIGEST; NGINX_CONF_DIGEST=$(digest nginx/nginx.conf)
export PROMETHEUS_CONF_DIGEST; PROMETHEUS_CONF_DIGEST=$(digest stack/prometheus.yml)
export ALERT_RULES_DIGEST; ALERT_RULES_DIGEST=$(digest stack/alerts.yml)

# --- deploy -----------------------------------------------------------------------------------
log "deploying ${STACK_NAME} at ${IMAGE_REGISTRY} tag ${IMAGE_TAG}"
docker stack config -c docker-stack.yml >/dev/null
docker stack deploy --detach=false --with-registry-auth -c docker-stack.yml "$STACK_NAME"

# One-shot jobs: wait for the current run. Tasks of earlier runs are shut down; a failed
# attempt is followed by a new task until restart_policy.max_attempts is spent.
wait_job() {
  local service="${STACK_NAME}_$1" deadline=$((SECONDS + JOB_TIMEOUT)) states
  while ((SECONDS < deadline)); do
    states=$(docker service ps "$service" --no-trunc --format '{{.DesiredState}}|{{.CurrentState}}' \
               | grep -v '^Shutdown|' | cut -d'|' -f2 || true)
    if grep -Eq '^(New|Pending|Assigned|Accepted|Preparing|Ready|Starting|Running)' <<<"$states"; then
      sleep 5
    elif grep -q '^Complete' <<<"$states"; then
      log "$1 completed"
      return 0
    else
      docker service logs --tail 50 "$service" >&2 || true
      die "$1 failed: ${states:-no task}"
    fi
  done
  die "$1 did not complete within ${JOB_TIMEOUT}s"
}
wait_job migrate
wait_job models-init

# A service whose update failed has been rolled back by Swarm: the deploy failed.
failed=()
for service in $(docker stack services "$STACK_NAME" --format '{{.Name}}'); do
  state=$(docker service inspect "$service" --format '{{if .UpdateStatus}}{{.UpdateStatus.State}}{{end}}')
  case "$state" in
    rollback_started|rollback_paused|rollback_completed|paused) failed+=("${service}(${state})") ;;
  esac
done
if ((${#failed[@]})); then
  die "update failed and was rolled back or paused: ${failed[*]} (docker service ps --no-trunc <service>)"
fi
docker stack services "$STACK_NAME"

if [[ -n ${SMOKE_URL:-} && -n ${SMOKE_TOKEN:-} ]]; then
  stack/smoke.sh "$SMOKE_URL" "$SMOKE_TOKEN"
else
  log "set SMOKE_URL and SMOKE_TOKEN to run stack/smoke.sh after the deploy"
fi
log "done"
