#!/usr/bin/env bash
# Property-based API testing with schemathesis against a live 3-node dev cluster.
#
#   scripts/schemathesis.sh          # short run (CI): SCHEMATHESIS_MAX_EXAMPLES=25 per operation
#   scripts/schemathesis.sh --long   # long run: 400 examples per operation and role
#
# Validates /v1/openapi.json with openapi-spec-validator, starts `ticketctl dev up` in a temp
# dir, makes keys for every role, a catalog, holds and a booking (so generated calls reach
# real handlers, not only 401/404), then runs schemathesis once per role with the checks
# not_a_server_error, status_code_conformance, content_type_conformance and
# response_schema_conformance, stops the cluster by pid and prints a summary. Exits non-zero
# on any failure. Needs python3 (the venv is created under ~/.cache/ticketledger when
# missing; PyPI must be reachable the first time).
#
# Not generated against: the cluster changes that would break the cluster under test
# (learners, membership, transfer-leader) and the endless /v1/watch stream.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

long=0
for a in "$@"; do
    case "$a" in
        --long) long=1 ;;
        *) echo "usage: $0 [--long]" >&2; exit 2 ;;
    esac
done
if [ "$long" = 1 ]; then
    max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-400}
else
    max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-25}
fi

venv=${SCHEMATHESIS_VENV:-$HOME/.cache/ticketledger/schemathesis-venv}
if [ ! -x "$venv/bin/schemathesis" ] || [ ! -x "$venv/bin/openapi-spec-validator" ]; then
    echo "==> creating $venv (schemathesis, openapi-spec-validator from PyPI)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'schemathesis==4.32.5' 'openapi-spec-validator==0.9.0'
fi

ensure_build_deps
announce_build
echo "==> building ticketd and ticketctl"
cargo build -p node -p client --bins
bin="$CARGO_TARGET_DIR/debug"

work=$(mktemp -d "${TMPDIR:-/tmp}/ticketledger-schemathesis.XXXXXX")
cleanup() {
    "$bin/ticketctl" dev down --dir "$work/dev" >/dev/null 2>&1 || true
    if [ -n "${KEEP_SCHEMATHESIS_DIR:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "==> starting a 3-node dev cluster in $work/dev"
# Cheap password hashing: schemathesis signs up and logs in many times.
"$bin/ticketctl" dev up --nodes 3 --dir "$work/dev" \
    --ticketd-arg=--argon2-memory-kib=64 --ticketd-arg=--argon2-iterations=1 >"$work/up.txt"
eval "$("$bin/ticketctl" dev env --dir "$work/dev")"
base=${TICKETLEDGER_URL%%,*}
base=${base%/}
echo "    node 1 at $base"

curl -fsS "$base/v1/openapi.json" -o "$work/openapi.json"
echo "==> openapi-spec-validator"
"$venv/bin/openapi-spec-validator" "$work/openapi.json" 2>&1 | cut -c1-600; [ "${PIPESTATUS[0]}" = 0 ]

echo "==> keys for every role, a catalog, holds and a booking"
"$venv/bin/python" - "$base" "$TICKETLEDGER_KEY" "$work" <<'PY'
import json, sys, requests
base, admin, work = sys.argv[1], sys.argv[2], sys.argv[3]
def call(method, path, key, body=None, ok=(200, 201)):
    r = requests.request(method, base + path, json=body, timeout=30,
                         headers={"Authorization": "Bearer " + key} if key else {})
    if r.status_code not in ok:
        sys.exit(f"setup: {method} {path} -> {r.status_code} {r.text}")
    return r.json()
keys = {"operator": admin}
for role in ["organizer", "service", "buyer"]:
    keys[role] = call("POST", "/v1/api-keys", admin, {"name": "schemathesis-" + role, "role": role})["key"]
org = keys["organizer"]
venue = call("POST", "/v1/venues", org, {"name": "Fuzz Hall", "sections": [
    {"name": "A", "rows": [{"label": str(r), "seats": 30} for r in range(1, 21)]},
    {"name": "Floor", "capacity": 2000}]})["venue_id"]
event = call("POST", "/v1/events", org, {"name": "Fuzz Show", "category": "music",
                                          "description": "generated requests"})["event_id"]
perfs = []
for i in range(2):
    p = call("POST", f"/v1/events/{event}/performances", org, {
        "venue_id": venue, "starts_at": "2099-01-01T20:00:00Z", "on_sale_at": 0,
        "hold_ttl_secs": 600, "max_seats_per_order": 10,
        "prices": [{"section": "A", "amount_minor": 5000, "currency": "EUR"},
                   {"section": "Floor", "amount_minor": 2000, "currency": "EUR"}]})["performance_id"]
    call("PATCH", f"/v1/performances/{p}", org, {"status": "on_sale"})
    perfs.append(p)
buyer = keys["buyer"]
holds = [call("POST", "/v1/holds", buyer, {"performance_id": perfs[0], "seats": [f"A:1:{n}"]})["hold_id"]
         for n in range(1, 4)]
call("POST", f"/v1/holds/{holds[0]}/extend", buyer, {"payment_ref": "fuzz-pay-0"})
booking = call("POST", f"/v1/holds/{holds[1]}/confirm", keys["service"], {"payment_ref": "fuzz-pay-1"})
session = call("POST", "/v1/auth/signup", None, {"email": "fuzz@example.com", "password": "fuzz-password",
                                                 "name": "Fuzz Buyer"})
keys["user"] = session["token"]
json.dump({"keys": keys, "performances": perfs, "venue": venue,
           "tickets": [t["ticket_id"] for t in booking["tickets"]]}, open(work + "/setup.json", "w"))
# Real ids for path and body fields, each drawn often enough that handlers run on real state:
# each path's `{id}` from the ids of its kind.
kinds = {"venues": [venue], "events": [event], "performances": perfs, "holds": holds,
         "bookings": [booking["booking_id"]]}
toml = [line for kind, ids in kinds.items()
        for line in (f"[dictionaries.{kind}_ids]", "values = " + json.dumps(ids + ["x_999999"]))]
for kind, regex in [("venues", "^/v1/venues/"), ("events", "^/v1/events/"),
                    ("performances", "^/v1/(reports/)?performances/"), ("holds", "^/v1/holds/"),
                    ("bookings", "^/v1/bookings/")]:
    toml += ["[[operations]]", f'include-path-regex = "{regex}"',
             f'parameters = {{ "path.id" = {{ dictionary = "{kind}_ids", probability = 0.7 }} }}']
toml += ["[dictionaries.performances]", "values = " + json.dumps(perfs),
        "[dictionaries.venues]", "values = " + json.dumps([venue]),
        "[dictionaries.seats]", "values = " + json.dumps([f"A:{r}:{n}" for r in range(2, 21) for n in range(1, 31, 7)]),
        "[dictionaries.sections]", "values = [\"A\", \"Floor\"]",
        "[dictionaries.statuses]", "values = [\"on_sale\", \"paused\", \"closed\"]",
        "[parameters]",
        '"body.performance_id" = { dictionary = "performances", probability = 0.7 }',
        '"body.venue_id" = { dictionary = "venues", probability = 0.7 }',
        '"body.seats[*]" = { dictionary = "seats", probability = 0.7 }',
        '"body.section" = { dictionary = "sections", probability = 0.5 }',
        '"body.status" = { dictionary = "statuses", probability = 0.3 }',
        '"query.section" = { dictionary = "sections", probability = 0.5 }']
open(work + "/schemathesis.toml", "w").write("\n".join(toml) + "\n")
print(f"    venue {venue}, event {event}, performances {perfs}, holds {holds}, booking {booking['booking_id']}")
PY

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
exclude='^/v1/cluster/(learners|membership|transfer-leader)$|^/v1/watch$'
roles=(operator organizer service buyer user)
failed=0
summary=()
for role in "${roles[@]}"; do
    key=$("$venv/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["keys"][sys.argv[2]])' "$work/setup.json" "$role")
    echo
    echo "==> schemathesis as $role: up to $max_examples examples per operation"
    start=$(date +%s)
    set +e
    "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$work/openapi.json" \
        --url "$base" -H "Authorization: Bearer $key" \
        --checks "$checks" --exclude-path-regex "$exclude" \
        --max-examples "$max_examples" --phases examples,coverage,fuzzing \
        --workers 2 --request-timeout 20 --seed "${SCHEMATHESIS_SEED:-6}" --no-color \
        --suppress-health-check all --continue-on-failure \
        --report ndjson --report-dir "$work/report-$role" >"$work/$role.log" 2>&1
    rc=$?
    set -e
    tail -n 25 "$work/$role.log"
    # Count the requests schemathesis actually sent (one ndjson event per scenario step).
    requests=$("$venv/bin/python" - "$work/report-$role" <<'PY'
import glob, re, sys
n = 0
for path in glob.glob(sys.argv[1] + "/*.ndjson"):
    for line in open(path):
        n += line.count('"request":')
print(n)
PY
)
    # A check that failed fails the run; a crash inside schemathesis itself (its "Runtime
    # Error", e.g. a Python AST recursion error in its coverage phase) is shown, not counted.
    verdict=ok
    if grep -q '^Failures:' "$work/$role.log"; then verdict=FAILED; failed=1
    elif [ "$rc" != 0 ]; then verdict="schemathesis error (rc=$rc), no failed check"; fi
    summary+=("$role: $verdict, requests=$requests, $(( $(date +%s) - start ))s")
done

# Not one 5xx anywhere, whatever schemathesis judged: the nodes count their own.
fivexx=0
for port in $(grep -oE 'http=[^ ]+' "$work/up.txt" | sed 's/.*://'); do
    n=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '/^ticketledger_http_responses_5xx_total/ {print $2}')
    fivexx=$(( fivexx + ${n:-0} ))
done

echo
echo "==> schemathesis summary (max examples $max_examples per operation)"
printf '    %s\n' "${summary[@]}"
echo "    5xx answered by the nodes (ticketledger_http_responses_5xx_total): $fivexx"
if [ "$failed" != 0 ] || [ "$fivexx" != 0 ]; then
    # What was answered with a 5xx, from schemathesis' own reports (a one-off in CI is
    # otherwise gone with the directory), and the directory kept for the node logs.
    echo "==> requests answered with a 5xx (method, path, status, body), from the reports:"
    python3 - "$work" <<'PY' || true
import glob, re, sys
seen = 0
for f in glob.glob(sys.argv[1] + "/report-*/*.ndjson"):
    for line in open(f, errors="replace"):
        if seen >= 10:
            break
        for m in re.finditer(r'"status_code":\s*(5\d\d)', line):
            start = max(0, m.start() - 600)
            print("   ", f.split("/")[-2], line[start:m.end() + 400].replace("\n", " "))
            seen += 1
            break
PY
    KEEP_SCHEMATHESIS_DIR=1
    echo "FAILED: see the output above (the reports and node logs are kept in $work)"
    exit 1
fi
echo "passed"
