#!/usr/bin/env bash
# Installs the system packages `rpcache stack up` runs the servers from:
# redis-server, PostgreSQL, Java 17 and Maven (Kafka itself comes from Maven
# Central), openssl (the stack's certificates), and what some tests run:
# chromium, the headless browser the dashboard test drives (Playwright uses it
# as installed: no browser download), pgbouncer, which the transaction-pooler
# test puts in front of the stack's PostgreSQL, and promtool (Debian's
# `prometheus` package), which tests the alert rules. Debian/Ubuntu only;
# idempotent: a package is installed only when its command is missing, and
# apt-get update runs at most once.
#
# Why stop the services the packages start: Debian starts a `main` PostgreSQL
# cluster on 5432, a system Redis on 6379, pgbouncer on 6432 and Prometheus on
# 9090 when a service manager runs. They would take the ports of the stack or
# of the tests (and the `main` cluster does not accept `postgres@localhost`
# without a password), so freshly installed ones are stopped and disabled.
# Services that were installed before are left alone.
set -euo pipefail

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  SUDO=(sudo)
fi

have() { command -v "$1" >/dev/null 2>&1; }

have_postgres_server() {
  compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || have pg_ctl
}

java_major() {
  # `openjdk version "17.0.15"` -> 17 ; `java version "1.8.0_392"` -> 1
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1
}

missing=()
have redis-server || missing+=(redis-server)
have_postgres_server || missing+=(postgresql)
if ! have java || [ "$(java_major)" -lt 17 ]; then
  missing+=(openjdk-17-jre-headless)
fi
have mvn || missing+=(maven)
# `rpcache stack up` makes the stack's certificates with the openssl command.
have openssl || missing+=(openssl)
have chromium || missing+=(chromium)
# pgbouncer lives in /usr/sbin, which a normal user's PATH may lack.
have pgbouncer || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
have promtool || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system deps: redis-server, postgresql, java >= 17, maven, openssl, chromium, pgbouncer and promtool are present"
  exit 0
fi

if ! have apt-get; then
  echo "system deps: missing ${missing[*]}, and this is not a Debian-like system:" >&2
  echo "install Redis 7, PostgreSQL 15+, Java 17+, Maven 3, OpenSSL, Chromium, PgBouncer and" >&2
  echo "Prometheus's promtool yourself." >&2
  exit 1
fi

echo "system deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"

stop_service() {
  local name=$1
  if [ -d /run/systemd/system ]; then
    "${SUDO[@]}" systemctl disable --now "$name" >/dev/null 2>&1 || true
  elif have service; then
    "${SUDO[@]}" service "$name" stop >/dev/null 2>&1 || true
  fi
}

for package in "${missing[@]}"; do
  case $package in
    redis-server)
      stop_service redis-server
      ;;
    postgresql)
      stop_service postgresql
      if have pg_lsclusters; then
        pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _; do
          "${SUDO[@]}" pg_ctlcluster "$version" "$cluster" stop >/dev/null 2>&1 || true
        done
      fi
      ;;
    pgbouncer)
      stop_service pgbouncer
      ;;
    prometheus)
      # Only promtool is wanted: the server must not keep 127.0.0.1:9090 busy.
      stop_service prometheus
      ;;
  esac
done
echo "system deps: done"
