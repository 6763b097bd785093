#!/usr/bin/env bash
# Starts the machine's PostgreSQL (Debian's `postgresql` package, installed by
# scripts/setup.sh) and makes the role and database that Hearth's tests use:
# role `hearth` (password `hearth`, may create databases), database `hearth`.
# Idempotent. Prints the database URL on stdout.
#
#   scripts/postgres.sh          start, create role and database, drop test
#                                databases that earlier runs left behind
set -euo pipefail

if ! command -v pg_lsclusters >/dev/null 2>&1; then
  echo "postgres: PostgreSQL is not installed; run scripts/setup.sh (it installs Debian's postgresql)" >&2
  exit 1
fi

cluster=$(pg_lsclusters --no-header | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -1)
  echo "postgres: creating cluster $version/main" >&2
  pg_createcluster "$version" main >&2
  cluster="$version main"
fi
read -r version name <<<"$cluster"
port=$(pg_lsclusters --no-header | awk -v v="$version" -v n="$name" '$1==v && $2==n {print $3}')
if ! pg_lsclusters --no-header | awk -v v="$version" -v n="$name" '$1==v && $2==n {print $4}' | grep -q online; then
  echo "postgres: starting cluster $version/$name on port $port" >&2
  pg_ctlcluster "$version" "$name" start >&2
fi
for _ in $(seq 1 100); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 0.1
done
pg_isready -h 127.0.0.1 -p "$port" >&2

psql_admin() { runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qtA "$@"; }
psql_admin -c "DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hearth') THEN
    CREATE ROLE hearth LOGIN CREATEDB PASSWORD 'hearth';
  END IF;
END \$\$;" >&2
if [ -z "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = 'hearth'")" ]; then
  psql_admin -c "CREATE DATABASE hearth OWNER hearth" >&2
fi
# Databases of earlier test runs (each test makes its own, named hearth_t_*).
for db in $(psql_admin -c "SELECT datname FROM pg_database WHERE datname LIKE 'hearth\_t\_%'"); do
  psql_admin -c "DROP DATABASE \"$db\" WITH (FORCE)" >&2
done
echo "postgres://hearth:hearth@127.0.0.1:$port/hearth"
