#!/usr/bin/env bash
# Peer comparison: the same workload (N no-op jobs, bulk-enqueued, then
# worked with C in flight) through graphile-worker (its defaults and its
# perf-test settings), pg-boss, pgqueuer and apalis-postgres, each in its
# own fresh database on the same PostgreSQL, then through jobvisor
# (`jobvisor-bench peer`); prints one table. See bench/peers/README.md.
#
#   bench/peers/run.sh [--items N] [--concurrency C] [--peers "LIST"]
#                      [--jobvisor PATH] [--workdir DIR] [--keep]
#
# Everything is installed into a temp directory (never into the repo).
set -euo pipefail

# ---- pinned peer versions ---------------------------------------------------
GRAPHILE_WORKER_VERSION=0.18.0
PG_BOSS_VERSION=12.38.0
NODE_PG_VERSION=8.23.1       # the pg client the Node drivers' probes use (and the peers)
PEER_NODE_VERSION=22.23.5    # both npm peers need Node >= 22 (22.18 for graphile-worker)
PGQUEUER_VERSION=1.6.0
ASYNCPG_VERSION=0.32.0
UVLOOP_VERSION=0.23.0        # pgqueuer's dependency; its `pgq run` uses it
APALIS_VERSION=1.0.0
APALIS_POSTGRES_VERSION=1.0.0

ALL_PEERS="graphile-default graphile-perf pgboss pgqueuer apalis"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

usage() {
  cat <<EOF
usage: bench/peers/run.sh [options]

  --items N          jobs per system (env ITEMS, default 20000)
  --concurrency C    jobs in flight (env CONCURRENCY, default 16)
  --peers "LIST"     peers to run, space-separated (env PEERS, default:
                     "$ALL_PEERS");
                     jobvisor always runs last (SKIP_JOBVISOR=1 to leave it out)
  --jobvisor PATH    jobvisor server binary (env JOBVISOR, default target/release/jobvisor);
                     the bench runner is the jobvisor-bench beside it
  --workdir DIR      install/build into DIR and keep it, so that a later run
                     reuses the installs and the apalis build (env WORKDIR;
                     default: a new temp directory, removed at the end)
  --keep             keep the temp directory and the benchmark databases

Other environment: DATABASE_URL (the PostgreSQL to create the databases in,
default postgres://postgres@127.0.0.1:5432/postgres), NODE (a Node >= 22.18
binary to use instead of the pinned one from npm), PEER_TIMEOUT (seconds per
phase, default 900), CARGO_BUILD_JOBS.
EOF
}

ITEMS="${ITEMS:-20000}"
CONCURRENCY="${CONCURRENCY:-16}"
PEERS="${PEERS:-$ALL_PEERS}"
JOBVISOR="${JOBVISOR:-$ROOT/target/release/jobvisor}"
WORKDIR="${WORKDIR:-}"
KEEP="${KEEP:-0}"
PEER_TIMEOUT="${PEER_TIMEOUT:-900}"
ADMIN_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

while [ $# -gt 0 ]; do
  case "$1" in
    --items) ITEMS="${2:?--items needs a value}"; shift 2 ;;
    --concurrency) CONCURRENCY="${2:?--concurrency needs a value}"; shift 2 ;;
    --peers) PEERS="${2?--peers needs a value}"; shift 2 ;;
    --jobvisor) JOBVISOR="${2:?--jobvisor needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done

die() { echo "run.sh: $*" >&2; exit 1; }
# psql on the admin database, without NOTICEs ("... does not exist, skipping").
pg_admin() { PGOPTIONS='-c client_min_messages=warning' psql "$ADMIN_URL" -XAtq "$@"; }
say() { echo "==> $*" >&2; }

[[ "$ITEMS" =~ ^[1-9][0-9]*$ ]] || die "--items must be a positive integer, not '$ITEMS'"
[[ "$CONCURRENCY" =~ ^[1-9][0-9]*$ ]] || die "--concurrency must be a positive integer, not '$CONCURRENCY'"
[[ "$PEER_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "PEER_TIMEOUT must be a positive integer"
for p in $PEERS; do
  case " $ALL_PEERS " in *" $p "*) ;; *) die "unknown peer '$p' (known: $ALL_PEERS)" ;; esac
done
wants() { case " $PEERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
wants_node() { wants graphile-default || wants graphile-perf || wants pgboss; }

# ---- tools ------------------------------------------------------------------
have() { command -v "$1" >/dev/null 2>&1; }
have python3 || die "python3 not found: it is needed for the table (and for pgqueuer); install Python 3.9+ (Debian: apt-get install python3 python3-venv)"
have psql || die "psql not found: it creates the benchmark databases (Debian: apt-get install postgresql-client)"
have timeout || die "timeout (coreutils) not found"
if wants_node; then
  have npm || die "npm not found: graphile-worker and pg-boss are installed with npm (install Node.js with npm, or leave graphile-default, graphile-perf and pgboss out of --peers)"
fi
if wants pgqueuer; then
  python3 -c 'import venv, ensurepip' 2>/dev/null \
    || die "python3 cannot make a venv with pip (Debian: apt-get install python3-venv), or leave pgqueuer out of --peers"
fi
if wants apalis; then
  have cargo || die "cargo not found: apalis is built from crates.io (install Rust from rustup.rs), or leave apalis out of --peers"
fi
if [ "${SKIP_JOBVISOR:-0}" != 1 ]; then
  [ -x "$JOBVISOR" ] || die "jobvisor binary not found at $JOBVISOR: build it (cargo build --release --workspace) or pass --jobvisor PATH / JOBVISOR=PATH"
  JOBVISOR_BENCH="$(dirname "$JOBVISOR")/jobvisor-bench"
  [ -x "$JOBVISOR_BENCH" ] || die "jobvisor-bench not found beside $JOBVISOR: build it (cargo build --release --workspace)"
fi
pg_admin -c 'select 1' >/dev/null 2>&1 \
  || die "cannot connect to PostgreSQL at $ADMIN_URL (set DATABASE_URL)"

# ---- work directory -----------------------------------------------------------
REMOVE_WORKDIR=0
if [ -z "$WORKDIR" ]; then
  WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/jobvisor-peers.XXXXXX")"
  [ "$KEEP" = 1 ] || REMOVE_WORKDIR=1
fi
mkdir -p "$WORKDIR/logs"
WORKDIR="$(cd "$WORKDIR" && pwd)"
# Results (JSON lines and logs of each run) outlive a temp work directory.
if [ "$REMOVE_WORKDIR" = 1 ]; then
  RESULTS="$(mktemp -d "${TMPDIR:-/tmp}/jobvisor-peers-results.XXXXXX")"
else
  RESULTS="$WORKDIR/results/$(date +%Y%m%dT%H%M%S)-$$"
  mkdir -p "$RESULTS"
fi
LOGS="$WORKDIR/logs"
CREATED_DBS=()

cleanup() {
  local db
  if [ "$KEEP" != 1 ]; then
    for db in ${CREATED_DBS[@]+"${CREATED_DBS[@]}"}; do
      pg_admin -c "drop database if exists \"$db\"" >/dev/null 2>&1 || true
    done
  fi
  if [ "$REMOVE_WORKDIR" = 1 ]; then rm -rf "$WORKDIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "work directory $WORKDIR (logs in $LOGS)"

# Status of each peer: "ok", or the reason it is left out / failed.
declare -A STATUS=()
ORDER=()
skip() { STATUS[$1]="SKIPPED: $2"; echo "run.sh: skipping $1: $2" >&2; }
is_on() { [ -z "${STATUS[$1]:-}" ]; }

# ---- installs ---------------------------------------------------------------
NODE_BIN=""
install_node_peers() {
  local dir="$WORKDIR/node" stamp
  stamp="graphile-worker@$GRAPHILE_WORKER_VERSION pg-boss@$PG_BOSS_VERSION pg@$NODE_PG_VERSION"
  mkdir -p "$dir"
  if [ "$(cat "$dir/.installed" 2>/dev/null)" != "$stamp" ]; then
    say "npm install $stamp"
    printf '{"name":"jobvisor-peer-bench","private":true,"type":"module"}\n' >"$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --save-exact \
      "graphile-worker@$GRAPHILE_WORKER_VERSION" "pg-boss@$PG_BOSS_VERSION" "pg@$NODE_PG_VERSION") \
      >"$LOGS/npm-peers.log" 2>&1 || { tail -n 20 "$LOGS/npm-peers.log" >&2; return 1; }
    echo "$stamp" >"$dir/.installed"
  fi
  cp "$HERE/common.mjs" "$HERE/graphile.mjs" "$HERE/pgboss.mjs" "$dir/"

  # The Node.js that runs the drivers: $NODE, else the pinned one from npm
  # (node-linux-<arch> ships the binary), else a system node that is new enough.
  if [ -n "${NODE:-}" ]; then
    NODE_BIN="$NODE"
  else
    local arch pkg ndir="$WORKDIR/nodejs"
    case "$(uname -m)" in x86_64|amd64) arch=x64 ;; aarch64|arm64) arch=arm64 ;; *) arch="" ;; esac
    pkg="node-linux-$arch"
    if [ -n "$arch" ] && [ "$(uname -s)" = Linux ]; then
      mkdir -p "$ndir"
      if [ "$(cat "$ndir/.installed" 2>/dev/null)" != "$pkg@$PEER_NODE_VERSION" ]; then
        say "npm install $pkg@$PEER_NODE_VERSION (the Node.js that runs the npm peers)"
        printf '{"name":"jobvisor-peer-bench-node","private":true}\n' >"$ndir/package.json"
        if (cd "$ndir" && npm install --no-audit --no-fund --save-exact "$pkg@$PEER_NODE_VERSION") \
          >"$LOGS/npm-node.log" 2>&1; then
          echo "$pkg@$PEER_NODE_VERSION" >"$ndir/.installed"
        else
          echo "run.sh: could not install $pkg@$PEER_NODE_VERSION (see $LOGS/npm-node.log)" >&2
        fi
      fi
      [ -x "$ndir/node_modules/$pkg/bin/node" ] && NODE_BIN="$ndir/node_modules/$pkg/bin/node"
    fi
    if [ -z "$NODE_BIN" ] && have node; then NODE_BIN="$(command -v node)"; fi
  fi
  [ -n "$NODE_BIN" ] || { echo "run.sh: no node binary (set NODE=...)" >&2; return 1; }
  "$NODE_BIN" -e '
    const [a, b] = process.versions.node.split(".").map(Number);
    if (a < 22 || (a === 22 && b < 18)) {
      console.error(`node ${process.versions.node} is too old: graphile-worker ${process.argv[1]} needs >= 22.18`);
      process.exit(1);
    }' "$GRAPHILE_WORKER_VERSION" || return 1
  say "node peers run on $NODE_BIN ($("$NODE_BIN" --version))"
}

install_pgqueuer() {
  local venv="$WORKDIR/venv" stamp
  stamp="pgqueuer==$PGQUEUER_VERSION asyncpg==$ASYNCPG_VERSION uvloop==$UVLOOP_VERSION"
  if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$stamp" ]; then
    say "pip install $stamp (venv $venv)"
    { python3 -m venv "$venv" &&
      "$venv/bin/python" -m pip install --disable-pip-version-check -q \
        "pgqueuer==$PGQUEUER_VERSION" "asyncpg==$ASYNCPG_VERSION" "uvloop==$UVLOOP_VERSION"
    } >"$LOGS/pip.log" 2>&1 || { tail -n 20 "$LOGS/pip.log" >&2; return 1; }
    echo "$stamp" >"$venv/.installed"
  fi
  cp "$HERE/pgqueuer_driver.py" "$WORKDIR/pgqueuer_driver.py"
}

APALIS_BIN=""
install_apalis() {
  local dir="$WORKDIR/apalis"
  mkdir -p "$dir/src"
  sed -e "s/@APALIS_VERSION@/$APALIS_VERSION/" -e "s/@APALIS_POSTGRES_VERSION@/$APALIS_POSTGRES_VERSION/" \
    "$HERE/apalis/Cargo.toml.in" >"$dir/Cargo.toml.new"
  cmp -s "$dir/Cargo.toml.new" "$dir/Cargo.toml" 2>/dev/null && rm "$dir/Cargo.toml.new" \
    || mv "$dir/Cargo.toml.new" "$dir/Cargo.toml"
  cmp -s "$HERE/apalis/main.rs" "$dir/src/main.rs" 2>/dev/null || cp "$HERE/apalis/main.rs" "$dir/src/main.rs"
  say "cargo build --release apalis $APALIS_VERSION + apalis-postgres $APALIS_POSTGRES_VERSION (several minutes on a small machine; log $LOGS/apalis-build.log)"
  # Its own target dir; no DATABASE_URL, so sqlx's macros use the .sqlx
  # query data that apalis-postgres ships instead of connecting anywhere.
  (cd "$dir" && env -u DATABASE_URL SQLX_OFFLINE=true CARGO_TARGET_DIR="$dir/target" \
    APALIS_VERSION="$APALIS_VERSION" APALIS_POSTGRES_VERSION="$APALIS_POSTGRES_VERSION" \
    PEER_RUSTC_VERSION="$(rustc --version 2>/dev/null | awk '{print $2}')" \
    nice -n 10 cargo build --release) >"$LOGS/apalis-build.log" 2>&1 \
    || { tail -n 30 "$LOGS/apalis-build.log" >&2; return 1; }
  APALIS_BIN="$dir/target/release/apalis-peer-bench"
}

if wants_node; then
  if ! install_node_peers; then
    for p in graphile-default graphile-perf pgboss; do
      wants "$p" && skip "$p" "npm install or Node.js >= 22.18 failed (see $LOGS/npm-*.log)"
    done
  fi
fi
if wants pgqueuer; then
  install_pgqueuer || skip pgqueuer "venv/pip install failed (see $LOGS/pip.log)"
fi
if wants apalis; then
  install_apalis || skip apalis "cargo build failed (see $LOGS/apalis-build.log)"
fi

# ---- runs -------------------------------------------------------------------
db_url() { # db_url NAME: ADMIN_URL with its database replaced by NAME
  python3 - "$ADMIN_URL" "$1" <<'EOF'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit((p.scheme, p.netloc, "/" + sys.argv[2], p.query, p.fragment)))
EOF
}
json_field() { # json_field FILE KEY: KEY of the last JSON line in FILE
  python3 - "$1" "$2" <<'EOF'
import json, sys
lines = [l for l in open(sys.argv[1]) if l.lstrip().startswith("{")]
v = json.loads(lines[-1]).get(sys.argv[2]) if lines else None
print("" if v is None else v)
EOF
}

run_peer() {
  local peer="$1" db url es rc
  local -a cmd extra=()
  case "$peer" in
    graphile-default) cmd=(env NO_LOG_SUCCESS=1 "$NODE_BIN" "$WORKDIR/node/graphile.mjs"); extra=(--config default) ;;
    graphile-perf) cmd=(env NO_LOG_SUCCESS=1 "$NODE_BIN" "$WORKDIR/node/graphile.mjs"); extra=(--config perf) ;;
    pgboss) cmd=("$NODE_BIN" "$WORKDIR/node/pgboss.mjs") ;;
    pgqueuer) cmd=("$WORKDIR/venv/bin/python" "$WORKDIR/pgqueuer_driver.py") ;;
    apalis) cmd=("$APALIS_BIN") ;;
  esac
  db="jv_peers_${peer//-/_}_$$"
  url="$(db_url "$db")"
  pg_admin -v ON_ERROR_STOP=1 -c "drop database if exists \"$db\"" -c "create database \"$db\"" >/dev/null \
    || { STATUS[$peer]="FAILED: could not create database $db"; return; }
  CREATED_DBS+=("$db")

  say "$peer: enqueue $ITEMS jobs (database $db)"
  rc=0
  timeout -k 10 "$PEER_TIMEOUT" "${cmd[@]}" enqueue --url "$url" --items "$ITEMS" --concurrency "$CONCURRENCY" \
    >"$RESULTS/$peer.enqueue.json" 2>"$RESULTS/$peer.enqueue.log" || rc=$?
  es="$(json_field "$RESULTS/$peer.enqueue.json" enqueue_seconds)"
  if [ "$rc" != 0 ] || [ -z "$es" ]; then
    tail -n 20 "$RESULTS/$peer.enqueue.log" >&2
    STATUS[$peer]="FAILED: enqueue exited $rc (see $RESULTS/$peer.enqueue.log)"
    echo "run.sh: ERROR: $peer: ${STATUS[$peer]}" >&2
    return
  fi

  say "$peer: work (enqueue took $(printf '%.3f' "$es")s)"
  rc=0
  timeout -k 10 "$PEER_TIMEOUT" "${cmd[@]}" work --url "$url" --items "$ITEMS" --concurrency "$CONCURRENCY" \
    --enqueue-seconds "$es" ${extra[@]+"${extra[@]}"} >"$RESULTS/$peer.json" 2>"$RESULTS/$peer.log" || rc=$?
  grep -v '^\s*$' "$RESULTS/$peer.log" | grep -iE 'error|warn' | head -n 5 >&2 || true
  if [ "$rc" = 3 ]; then
    STATUS[$peer]="FAILED: not every job ran and was completed (see $RESULTS/$peer.json)"
    echo "run.sh: ERROR: $peer: ${STATUS[$peer]}" >&2
  elif [ "$rc" != 0 ] || [ -z "$(json_field "$RESULTS/$peer.json" items_per_second)" ]; then
    tail -n 20 "$RESULTS/$peer.log" >&2
    STATUS[$peer]="FAILED: worker exited $rc (see $RESULTS/$peer.log)"
    echo "run.sh: ERROR: $peer: ${STATUS[$peer]}" >&2
  fi
  if [ "$KEEP" != 1 ]; then
    pg_admin -c "drop database if exists \"$db\"" >/dev/null 2>&1 || true
  fi
}

say "workload: $ITEMS no-op jobs, $CONCURRENCY in flight; peers: $PEERS"
for peer in $PEERS; do
  ORDER+=("$peer")
  if is_on "$peer"; then run_peer "$peer"; fi
done

if [ "${SKIP_JOBVISOR:-0}" != 1 ]; then
  # Two rows: the default (a worker moves on only once its result is
  # committed) and --pipelined-acks (its result commits while it runs the
  # next item), the counterpart of peers that complete jobs in batches
  # after the job function returned.
  for mode in jobvisor jobvisor-pipelined; do
    flags=()
    [ "$mode" = jobvisor-pipelined ] && flags=(--pipelined-acks)
    ORDER+=("$mode")
    say "$mode: $JOBVISOR_BENCH ${flags[*]} peer --items $ITEMS --concurrency $CONCURRENCY"
    rc=0
    JOBVISOR_BIN="$JOBVISOR" timeout -k 10 "$PEER_TIMEOUT" "$JOBVISOR_BENCH" "${flags[@]}" peer --json --items "$ITEMS" --concurrency "$CONCURRENCY" \
      --database-url "$ADMIN_URL" >"$RESULTS/$mode.json" 2>"$RESULTS/$mode.log" || rc=$?
    if [ "$rc" != 0 ] || [ -z "$(json_field "$RESULTS/$mode.json" items_per_second)" ]; then
      tail -n 20 "$RESULTS/$mode.log" >&2
      STATUS[$mode]="FAILED: exited $rc (see $RESULTS/$mode.log)"
      echo "run.sh: ERROR: $mode: ${STATUS[$mode]}" >&2
    fi
  done
  JOBVISOR_VERSION="$("$JOBVISOR" --version 2>/dev/null || echo jobvisor)"
  case "$JOBVISOR" in */debug/*) JOBVISOR_VERSION="$JOBVISOR_VERSION (DEBUG build)" ;; esac
else
  JOBVISOR_VERSION=""
fi

# ---- table ------------------------------------------------------------------
for name in "${ORDER[@]}"; do printf '%s\t%s\n' "$name" "${STATUS[$name]:-ok}"; done >"$RESULTS/status.tsv"
PG_VERSION="$(pg_admin -c 'show server_version' 2>/dev/null || echo '?')"
python3 - "$RESULTS" "$ITEMS" "$CONCURRENCY" "$PG_VERSION" "$JOBVISOR_VERSION" <<'EOF'
import json, os, sys

results, items, concurrency, pg_version, jobvisor_version = sys.argv[1:6]

def last_json(path):
    try:
        lines = [l for l in open(path) if l.lstrip().startswith("{")]
    except OSError:
        return None
    return json.loads(lines[-1]) if lines else None

rows = []
for line in open(os.path.join(results, "status.tsv")):
    name, status = line.rstrip("\n").split("\t", 1)
    r = last_json(os.path.join(results, f"{name}.json")) or {}
    if name in ("jobvisor", "jobvisor-pipelined"):
        r.setdefault("version", jobvisor_version)
        r.setdefault("verified", status == "ok")  # it fails unless all items SUCCEEDED
    rows.append((name, status, r))

jv = next((r for n, s, r in rows if n == "jobvisor" and s == "ok"), None)

def num(x, fmt):
    return "-" if x is None else format(x, fmt)

def ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}x"

table = [("system", "version", "enqueue s", "run s", "items/s", "peak RSS MiB",
          "items/s vs jobvisor", "RSS vs jobvisor", "check")]
for name, status, r in rows:
    if status != "ok" and not r.get("items_per_second"):
        table.append((name, r.get("version", ""), "-", "-", "-", "-", "-", "-", status))
        continue
    ips, rss = r.get("items_per_second"), r.get("rss_mib")
    table.append((
        r.get("system", name), r.get("version", ""),
        num(r.get("enqueue_seconds"), ".3f"), num(r.get("run_seconds"), ".3f"),
        num(ips, ",.0f"), num(rss, ".1f"),
        ratio(ips, jv and jv.get("items_per_second")),
        ratio(rss, jv and jv.get("rss_mib")),
        "ok" if status == "ok" and r.get("verified") else (status if status != "ok" else "NOT VERIFIED"),
    ))

widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
right = {2, 3, 4, 5, 6, 7}
print()
print(f"# {items} no-op jobs, {concurrency} in flight, PostgreSQL {pg_version}, {os.cpu_count()} cores; "
      "run s = worker start (jobs already enqueued) until all completions are committed; "
      "RSS = peak RSS (VmHWM) of the worker process")
for i, row in enumerate(table):
    cells = [str(c).rjust(widths[j]) if j in right else str(c).ljust(widths[j]) for j, c in enumerate(row)]
    print("| " + " | ".join(cells) + " |")
    if i == 0:
        print("|" + "|".join(("-" * (w + 1) + ":") if j in right else ("-" * (w + 2)) for j, w in enumerate(widths)) + "|")
print(f"\n# JSON lines: {results}/*.json")
EOF

failed=0
for name in "${ORDER[@]}"; do
  case "${STATUS[$name]:-ok}" in FAILED*) failed=1 ;; esac
done
exit "$failed"
