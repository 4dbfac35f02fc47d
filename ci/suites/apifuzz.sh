#!/usr/bin/env bash
# Property-based fuzzing of the REST API with schemathesis (PyPI): a real `cairn node` (2 small
# file-backed disks, temp data dir, a free port on 127.0.0.1), driven through every operation of
# the OpenAPI document it serves at /api/v1/openapi.json, authenticated with an admin API token.
# Checks (list below): no 5xx, every status code, body and content type as documented, no
# operation that answers without credentials, bad input refused with a 4xx. Bounded and
# deterministic: deterministic generation, a fixed number of examples per operation, one worker
# (about a minute and a half here). ci/soak.sh runs it longer, with a seed and the stateful phase:
#   CAIRN_APIFUZZ_EXAMPLES=<n> CAIRN_APIFUZZ_SEED=<n> CAIRN_APIFUZZ_PHASES=<list> bash ci/suites/apifuzz.sh
# Reports (JUnit, and the failing cases as a pytest file) go to $TEST_ARTIFACTS/apifuzz.
set -uo pipefail
cd "$(dirname "$0")/../.."
name=apifuzz
examples="${CAIRN_APIFUZZ_EXAMPLES:-20}"
# Default: deterministic generation (the same cases every run). ci/soak.sh gives a seed instead,
# for new cases each time (the seed is printed so a failure can be replayed).
seed="${CAIRN_APIFUZZ_SEED:-}"
if [ -n "$seed" ]; then mode=(--seed "$seed"); else mode=(--generation-deterministic); fi
phases="${CAIRN_APIFUZZ_PHASES:-coverage,fuzzing}"
# No 5xx; status codes, bodies and content types as documented; no operation that answers
# without credentials; schema-violating input refused with a 4xx; 405 for undocumented methods;
# a deleted object stays gone; a created one can be read back; required headers enforced;
# schema-valid input accepted (valid-by-schema means the server takes it, or answers 404/409
# for objects that are missing or in the way); `Allow` lists exactly the documented methods.
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
checks+=,ignored_auth,negative_data_rejection,unsupported_method,use_after_free
checks+=,ensure_resource_availability,missing_required_header
checks+=,positive_data_acceptance,allow_header_conformance
fail() { echo "suite-fail: $name ($*)"; exit 1; }
command -v python3 >/dev/null || { echo "skipped: $name (no python3)"; exit 0; }
command -v curl >/dev/null || fail "no curl"
target="${CARGO_TARGET_DIR:-target}"

# schemathesis in a venv of its own inside the target dir (pinned: a new release may generate
# other cases, and the run must be the same every time).
version=4.32.5
venv="$target/apifuzz-venv"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$version"; then
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "python3 -m venv (python3-venv missing?)"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$version" || fail "pip install schemathesis"
fi

cargo build -q -p cairn || fail "cargo build"
bin="$target/debug/cairn"
[ -x "$bin" ] || fail "no binary at $bin"
art="${TEST_ARTIFACTS:-target/test-artifacts}/$name"
rm -rf "$art"
mkdir -p "$art"
. ci/test-node.sh
start_test_node "$bin" apifuzz-test

base="https://127.0.0.1:$port/api/v1"
# The node's own self-signed certificate is the only one trusted: TLS stays verified.
cert=$(find "$work/data" -path '*tls/cert.pem' | head -1)
[ -n "$cert" ] || fail "no tls/cert.pem under the node's data dir"
c() { curl -sS --cacert "$cert" --max-time 30 "$@"; }

# The fuzzer acts as its own admin user with an API token (the guards below keep it alive).
fuzz_user="fuzz-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
fuzz_pw="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
jar="$work/cookies"
login=$(c -c "$jar" -H 'content-type: application/json' \
  -d "{\"user\":\"admin\",\"password\":\"$pw\"}" "$base/auth/login") || fail "login"
csrf=$(printf '%s' "$login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["csrf_token"])') ||
  fail "login answered $login"
c -b "$jar" -H "x-csrf-token: $csrf" -H 'content-type: application/json' -o /dev/null -w '%{http_code}' \
  -d "{\"name\":\"$fuzz_user\",\"role\":\"admin\",\"password\":\"$fuzz_pw\"}" "$base/users" | grep -q 201 ||
  fail "create the fuzz user"
login=$(c -c "$jar" -H 'content-type: application/json' \
  -d "{\"user\":\"$fuzz_user\",\"password\":\"$fuzz_pw\"}" "$base/auth/login") || fail "fuzz user login"
csrf=$(printf '%s' "$login" | python3 -c 'import json,sys; print(json.load(sys.stdin)["csrf_token"])') ||
  fail "fuzz user login answered $login"
tok=$(c -b "$jar" -H "x-csrf-token: $csrf" -H 'content-type: application/json' \
  -d '{"name":"apifuzz","expires_in_secs":7200}' "$base/tokens" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])') || fail "create the fuzz token"

# Guards, as a schemathesis hook (the fuzzer learns real ids from answers, e.g. GET /tokens):
# a generated path parameter that names what the run stands on (its user, its token, this node
# as cluster member "1" or by name) is replaced; host paths in bodies ("file", "path") are
# moved under the run's temp dir, so an export or disk add never touches the host's files; an
# NBD listen address is kept on loopback (127.0.0.1, or ::1 for IPv6); "kernel" points at a
# 4 KiB file so VM definitions get through; POST /control never removes this node nor joins
# another cluster.
mkdir -p "$work/sandbox" "$work/hooks"
head -c 4096 /dev/zero >"$work/kernel.bin"
cat >"$work/hooks/apifuzz_hooks.py" <<'PY'
import ipaddress
import os
import posixpath

import schemathesis

PROTECTED = {v for v in os.environ["APIFUZZ_PROTECT"].split(",") if v}
SANDBOX = os.environ["APIFUZZ_SANDBOX"]
KERNEL = os.environ["APIFUZZ_KERNEL"]


def sandboxed(p):
    if not p.startswith("/") or "\0" in p or p == SANDBOX or p.startswith(SANDBOX + "/"):
        return p  # invalid as given (the node must refuse it), or already moved
    parts = [c for c in posixpath.normpath(p).split("/") if c not in ("", ".", "..")]
    return posixpath.join(SANDBOX, *parts)


def loopback(listen):
    host, sep, port = listen.rpartition(":")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return listen  # not ip:port: the node must refuse it
    if ip.is_loopback:
        return listen
    return f"[::1]{sep}{port}" if ip.version == 6 else f"127.0.0.1{sep}{port}"


def fix_body(b):
    if isinstance(b, list):
        for x in b:
            fix_body(x)
    if not isinstance(b, dict):
        return
    for k, v in list(b.items()):
        if k in ("file", "path") and isinstance(v, str):
            b[k] = sandboxed(v)
        elif k == "kernel" and isinstance(v, str) and v.startswith("/"):
            b[k] = KERNEL
        elif k == "listen" and isinstance(v, str):
            b[k] = loopback(v)
        else:
            fix_body(v)


@schemathesis.hook
def before_call(context, case, kwargs):
    params = case.path_parameters or {}
    for k, v in list(params.items()):
        if str(v) in PROTECTED:
            params[k] = "apifuzz-protected"
    fix_body(case.body)
    if isinstance(case.body, dict) and case.body.get("action") in ("cluster_remove", "cluster_join"):
        case.body.clear()
        case.body["action"] = "cluster_status"
    # GET /system/log takes after or before, not both (400), which parameters in the document
    # cannot say: one of them, so the rest of the operation's answers stay checked as valid.
    query = case.query or {}
    if case.path == "/system/log" and "after" in query and "before" in query:
        del query["before"]
PY
tok_id=$(printf '%s' "$tok" | cut -d_ -f2)
export SCHEMATHESIS_HOOKS=apifuzz_hooks PYTHONPATH="$work/hooks" APIFUZZ_SANDBOX="$work/sandbox" \
  APIFUZZ_KERNEL="$work/kernel.bin" APIFUZZ_PROTECT="$fuzz_user,$tok_id,1,apifuzz-test,admin"

# Per-operation settings (schemathesis.toml in the run's temp dir). "Schema-valid input
# accepted" also takes a 400 only where validity is more than a schema can say, with reasons:
# - PUT /certificate: a PEM certificate and its matching private key (parsed and checked
#   against each other) are not a pattern.
# (POST /control has no exception: the document gives each action's fields, oneOf by action.)
cat >"$work/schemathesis.toml" <<'TOML'
[[operations]]
include-path = "/certificate"
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
TOML

# Excluded, and why:
# - GET /vms/{name}/console/ws and GET /stats/stream hold the connection open (WebSocket, SSE):
#   a generated request would wait for its timeout instead of answering.
start=$(date +%s)
"$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$base/openapi.json" \
  --url "$base" \
  --tls-verify "$cert" \
  -H "Authorization: Bearer $tok" \
  --checks "$checks" \
  --phases "$phases" \
  --max-examples "$examples" \
  "${mode[@]}" \
  --workers 1 \
  --request-timeout 30 \
  --exclude-path /vms/{name}/console/ws \
  --exclude-path /stats/stream \
  --no-color \
  --report junit,pytest --report-dir "$art" \
  >"$art/schemathesis.log" 2>&1
rc=$?
secs=$(( $(date +%s) - start ))
tail -60 "$art/schemathesis.log"
echo "$name: schemathesis ran ${secs}s, $examples examples per operation, ${seed:+seed $seed, }phases $phases (exit $rc)"
kill -0 "$pid" 2>/dev/null || { tail -40 "$work/node.log"; fail "the node died during the run"; }
if [ "$rc" -eq 0 ]; then
  echo "suite-pass: $name"
else
  tail -20 "$work/node.log"
  fail "schemathesis found failures; log and reports in $art"
fi
