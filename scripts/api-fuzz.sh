#!/usr/bin/env bash
# Property-based fuzzing of the HTTP API with schemathesis (from PyPI),
# driven by the OpenAPI document the server generates: no request may get
# a 5xx, every status code and body must match the document.
#
# Runs a real `hearth serve` with one live sandbox (and room for no more,
# so generated creates are refused instead of booting VMs). Destroying that
# sandbox or shortening its timeout would end it and leave the fuzzer only
# 409s, so those two routes are left to the end-to-end tests.
#
#   scripts/api-fuzz.sh [max-examples]   (default 40 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${1:-40}"
hearth="${HEARTH_BIN:-target/debug/hearth}"
python3 -m pip install -q 'schemathesis>=4,<5' 'openapi-spec-validator>=0.7' >/dev/null 2>&1 \
    || python3 -m pip install 'schemathesis>=4,<5' 'openapi-spec-validator>=0.7'

home="$(mktemp -d /tmp/hfuzz.XXXXXX)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$home"
}
trap cleanup EXIT

HEARTH_HOME="$home" "$hearth" serve --listen 127.0.0.1:0 --max-sandboxes 1 >"$home/out" 2>"$home/err" &
server_pid=$!
for _ in $(seq 1 100); do
    [ -s "$home/out" ] && break
    sleep 0.1
done
url="$(sed -n 's/^hearth: listening on //p' "$home/out")"
[ -n "$url" ] || { cat "$home/err"; echo "api-fuzz: the server did not start" >&2; exit 1; }
token="$(cat "$home/token")"

# The document itself must be valid OpenAPI.
curl -sf -H "Authorization: Bearer $token" "$url/v1/openapi.json" -o "$home/openapi.json"
python3 -m openapi_spec_validator "$home/openapi.json"

created="$(curl -sf -X POST -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"memory":"256M","timeout":"30m"}' "$url/v1/sandboxes")"
export HEARTH_FUZZ_SANDBOX="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$created")"
echo "api-fuzz: server $url, sandbox $HEARTH_FUZZ_SANDBOX"

schemathesis --config-file scripts/schemathesis.toml run "$url/v1/openapi.json" \
    --url "$url" -H "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
    --exclude-method DELETE --exclude-path '/v1/sandboxes/{id}' --exclude-path '/v1/sandboxes/{id}/timeout' \
    --max-examples "$examples" --workers 1 --suppress-health-check all

state="$(curl -sf -H "Authorization: Bearer $token" "$url/v1/sandboxes/$HEARTH_FUZZ_SANDBOX" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')"
echo "api-fuzz: the sandbox is $state after fuzzing"
