#!/usr/bin/env bash
# Egress benchmark (run as root): builds a fake internet (a network
# namespace with an HTTP server and DNS), starts a daemon with egress on,
# and measures in one run, each against a direct baseline on this machine:
#  - an HTTP/1.1 keep-alive request through the proxy vs direct;
#  - a new connection + request through the proxy vs direct, with 1 and
#    with 200 sandboxes (and their policies) loaded;
#  - a new TLS connection + request: spliced, terminated by the proxy for a
#    credential rule (leaf cached), and terminated under a policy with
#    enforceRequestHost (every request's Host checked against the SNI) vs
#    direct;
#  - 300 MiB over one TLS connection: spliced, terminated for credentials
#    and under enforceRequestHost vs direct, with the CPU seconds per GiB
#    of the proxy and of the machine;
#  - a new TLS connection whose upstream wants a client certificate the
#    proxy presents (mutual TLS) vs one terminated for a header;
#  - a keep-alive request checked by an http protocol rule vs spliced, and
#    50 MiB under a 10 MiB/s bandwidth limit;
#  - PostgreSQL (pgbench, `select 1`): a query on a reused connection and a
#    new connection (SCRAM-SHA-256, TLS upstream) + query, the proxy
#    completing the login vs the client logging in directly;
#  - git clone of a 50 MiB repository over SSH, and the same 50 MiB read
#    over SSH alone (`ssh host cat`): through the proxy's ssh_proxy
#    (terminated, re-originated with the deploy key) vs the host's ssh with
#    the key;
#  - a cached DNS answer from the policy resolver;
#  - sandbox create with networking vs without.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh
out="$(scripts/build.sh release)"
s="$out/sandstone"
work="$(mktemp -d /var/tmp/sandstone-egress-bench-XXXXXX)"
# PostgreSQL's data, owned by its user (who cannot enter $work).
pgdata="$(mktemp -d /var/tmp/sandstone-egress-bench-pg-XXXXXX)"
ns="fibench$$"
pids=()
cleanup() {
  bench_cleanup
  rm -rf "$pgdata"
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
# The fake internet: 10.98.0.2 serves HTTP, HTTPS (its own CA) and DNS
# (web.test, api.test -> 10.98.0.2).
ip netns add "$ns"
ip link add "fibh$$" type veth peer name eth0 netns "$ns"
ip addr add 10.98.0.1/24 dev "fibh$$"; ip link set "fibh$$" up
ip -n "$ns" addr add 10.98.0.2/24 dev eth0; ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
mkdir -p "$work/fake"
FAKE_TLS_DIR="$work/fake" FAKE_TOKEN=bench-token \
  ip netns exec "$ns" python3 tests/fake_internet/servers.py 10.98.0.2 10.98.0.2 >/dev/null &
pids+=($!)
for _ in $(seq 50); do
  curl -fsS -m 1 --cacert "$work/fake/ca.pem" --resolve web.test:443:10.98.0.2 https://web.test/ >/dev/null 2>&1 && break
  sleep 0.2
done
echo "{\"upstreamCaFiles\": [\"$work/fake/ca.pem\"]}" > "$work/egress.json"
port=$(( 20000 + RANDOM % 20000 ))
start_daemon net "$port" --pool-gib 16 -- --warm-pool 0 --egress-pool 10.97.0.0/16 --dns-upstream 10.98.0.2:53 --egress-config "$work/egress.json"
start_daemon plain "$((port + 1))" --pool-gib 16 -- --warm-pool 0
id=$(on net create)
# api.test has a credential rule (so the proxy terminates its TLS); web.test
# has none (spliced).
printf 'Authorization: Bearer bench-token\n' | on net cred add bench >/dev/null
cat > "$work/policy.json" <<'EOF'
{"mode": "block-all",
 "egress": {"trafficRules": [{"name": "fake", "action": "allow", "domains": ["web.test", "api.test"]},
                             {"name": "lan", "action": "allow", "cidrs": ["10.98.0.0/24"]}],
            "credentialRules": [{"name": "api", "credentialRef": "api", "domains": ["api.test"]}]},
 "credentialBindings": [{"ref": "api", "sourceRef": "bench", "projection": {"type": "http_headers"}}]}
EOF
on net policy set "$id" --file "$work/policy.json" >/dev/null
on net cp "$work/fake/ca.pem" "$id:/tmp/fake-ca.pem"
# web.test again, with no credential rule, under enforceRequestHost: the
# proxy terminates it only to check each request's Host.
strict=$(on net create)
cat > "$work/strict.json" <<'EOF'
{"mode": "block-all",
 "egress": {"trafficRules": [{"name": "fake", "action": "allow", "domains": ["web.test"]}],
            "enforceRequestHost": true}}
EOF
on net policy set "$strict" --file "$work/strict.json" >/dev/null
# mtls.test:8443 wants a client certificate, which the proxy presents.
token=$(cat "$work/net/admin.token")
python3 - "$work/fake" > "$work/cert.json" <<'EOF'
import json, sys
d = sys.argv[1]
read = lambda f: open(f"{d}/{f}").read()
print(json.dumps({"name": "corp", "resolverKind": "static_tls_client_certificate",
  "spec": {"staticTLSClientCertificate": {"certificatePem": read("client.pem"),
    "privateKeyPem": read("client.key"), "caPem": read("internal-ca.pem")}}}))
EOF
curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  "http://127.0.0.1:$port/api/v1/credential-sources" -d @"$work/cert.json" >/dev/null
python3 - "$work/policy.json" > "$work/policy-mtls.json" <<'EOF'
import json, sys
p = json.load(open(sys.argv[1]))
p["egress"]["trafficRules"].append({"name": "mtls", "action": "allow", "domains": ["mtls.test"]})
p["egress"]["credentialRules"].append({"name": "mtls", "credentialRef": "corp", "domains": ["mtls.test"]})
p["credentialBindings"].append({"ref": "corp", "sourceRef": "corp", "projection": {"type": "tls_client_certificate"}})
print(json.dumps(p))
EOF
on net policy set "$id" --file "$work/policy-mtls.json" >/dev/null
# web.test under an http protocol rule (so terminated, every request
# checked) and a 10 MiB/s bandwidth limit.
ruled=$(on net create)
cat > "$work/ruled.json" <<'EOF'
{"mode": "block-all",
 "egress": {"trafficRules": [{"name": "fake", "action": "allow", "domains": ["web.test"]}],
            "protocolRules": [{"name": "reads", "protocol": "http", "domains": ["web.test"],
                               "http": {"methods": {"allowed": ["GET", "HEAD"]}}}],
            "bandwidth": {"bytesPerSecond": 10485760}}}
EOF
on net policy set "$ruled" --file "$work/ruled.json" >/dev/null
# db.test:5432: PostgreSQL (TLS only, SCRAM-SHA-256) in the fake internet,
# and a sandbox (on the host's /usr, for pgbench) whose policy has the proxy
# log in as `bench` with a source's password.
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
chown postgres:postgres "$pgdata"
as_pg "$pgbin/initdb" -D "$pgdata" -U postgres --auth-local=trust --auth-host=scram-sha-256 >/dev/null
printf 'local all all trust\nhostssl all all 0.0.0.0/0 scram-sha-256\n' > "$pgdata/pg_hba.conf"
install -o postgres -g postgres -m 600 "$work/fake/leaf.pem" "$pgdata/server.crt"
install -o postgres -g postgres -m 600 "$work/fake/leaf.key" "$pgdata/server.key"
ip netns exec "$ns" setpriv --reuid=postgres --regid=postgres --init-groups -- \
  "$pgbin/postgres" -D "$pgdata" -c listen_addresses=10.98.0.2 -c "unix_socket_directories=$pgdata" \
  -c ssl=on -c max_connections=50 >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do as_pg "$pgbin/pg_isready" -q -h "$pgdata" && break; sleep 0.1; done
pgpw="bench-$RANDOM$RANDOM$RANDOM"
as_pg "$pgbin/psql" -h "$pgdata" -U postgres -qc "CREATE ROLE bench LOGIN PASSWORD '$pgpw'"
curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  "http://127.0.0.1:$port/api/v1/credential-sources" -d @- >/dev/null <<EOF
{"name": "db", "resolverKind": "static_username_password",
 "spec": {"staticUsernamePassword": {"username": "bench", "password": "$pgpw"}}}
EOF
db=$(on net create --template host)
cat > "$work/db.json" <<'EOF'
{"mode": "block-all",
 "egress": {"trafficRules": [{"name": "db", "action": "allow", "domains": ["db.test"],
                              "ports": [{"port": 5432}], "matchDnsAnswers": true}],
            "credentialRules": [{"name": "db", "credentialRef": "db", "protocol": "postgres",
                                 "domains": ["db.test"], "ports": [{"port": 5432}]}]},
 "credentialBindings": [{"ref": "db", "sourceRef": "db", "projection": {"type": "username_password"}}]}
EOF
on net policy set "$db" --file "$work/db.json" >/dev/null
printf 'select 1;\n' > "$work/select.sql"
on net cp "$work/select.sql" "$db:/tmp/select.sql"
# pgbench WHERE ARGS...: pgbench's output and its per-transaction log (-l),
# the client logging in directly (TLS, SCRAM) or through the proxy (no
# password).
pgbench() {
  local where=$1; shift
  case $where in
    direct) rm -f "$work"/pgb.*
      PGPASSWORD="$pgpw" PGSSLMODE=require "$pgbin/pgbench" -h 10.98.0.2 -U bench -n \
        -f "$work/select.sql" -l --log-prefix="$work/pgb" "$@" postgres 2>&1
      cat "$work"/pgb.* ;;
    proxy) on net exec "$db" -- sh -c "rm -f /tmp/pgb.*; $pgbin/pgbench -h db.test -U sandbox -n \
        -f /tmp/select.sql -l --log-prefix=/tmp/pgb $* postgres 2>&1; cat /tmp/pgb.*" ;;
  esac
}
# "p50 p99" in ms of a query on a reused connection (the log's latencies).
pg_query() {
  pgbench "$1" -t 3000 | awk 'NF == 6 && $1 ~ /^[0-9]+$/ {print $3}' | sort -n \
    | awk '{a[NR] = $1} END {printf "%.3f %.3f", a[int(NR * 0.5) + 1] / 1000, a[int(NR * 0.99) + 1] / 1000}'
}
# The mean time to a new connection (pgbench -C: TCP, TLS, the SCRAM
# login and the session's start; it reports no percentiles).
pg_connect() {
  pgbench "$1" -C -t 300 | sed -n 's/^average connection time = \([0-9.]*\) ms$/\1/p'
}
# git.test:22: sshd in the fake internet letting root in with a deploy key,
# serving a bare repository of 50 MiB of random bytes; a sandbox whose
# policy has the proxy re-originate SSH with that key.
mkdir -p /run/sshd "$work/ssh"
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/host"
ssh-keygen -q -t ed25519 -N '' -f "$work/ssh/deploy"
cp "$work/ssh/deploy.pub" "$work/ssh/authorized_keys"
cat > "$work/ssh/sshd_config" <<EOF
ListenAddress 10.98.0.2
HostKey $work/ssh/host
PidFile $work/ssh/sshd.pid
AuthorizedKeysFile $work/ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
EOF
git init -q -b main "$work/ssh/work"
head -c 50M /dev/urandom > "$work/ssh/work/blob"
git -C "$work/ssh/work" add blob
git -C "$work/ssh/work" -c user.name=bench -c user.email=bench@git.test commit -qm blob
git clone -q --bare "$work/ssh/work" "$work/ssh/repo.git"
ip netns exec "$ns" /usr/sbin/sshd -D -f "$work/ssh/sshd_config" &
pids+=($!)
python3 - "$work/ssh/deploy" > "$work/deploy.json" <<'EOF'
import json, sys
print(json.dumps({"name": "deploy", "resolverKind": "static_ssh_private_key",
  "spec": {"staticSSHPrivateKey": {"privateKeyPem": open(sys.argv[1]).read()}}}))
EOF
curl -fsS -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  "http://127.0.0.1:$port/api/v1/credential-sources" -d @"$work/deploy.json" >/dev/null
gitsb=$(on net create --template host)
placeholder=$(on net exec "$gitsb" -- sh -c "mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519 && cat ~/.ssh/id_ed25519.pub")
python3 - "$work/ssh/host.pub" "$placeholder" > "$work/git.json" <<'EOF'
import json, sys
print(json.dumps({"mode": "block-all",
  "egress": {"trafficRules": [{"name": "git", "action": "allow", "domains": ["git.test"],
                               "ports": [{"port": 22}], "matchDnsAnswers": True}],
             "credentialRules": [{"name": "git", "credentialRef": "git", "protocol": "ssh",
                                  "domains": ["git.test"], "ports": [{"port": 22}]}]},
  "credentialBindings": [{"ref": "git", "sourceRef": "deploy", "projection": {"type": "ssh_proxy",
    "sshProxy": {"upstreamUsername": "root", "sandboxPublicKeys": [sys.argv[2]],
                 "knownHosts": ["git.test " + open(sys.argv[1]).read().strip()]}}}]}))
EOF
on net policy set "$gitsb" --file "$work/git.json" >/dev/null
# over_ssh WHAT WHERE: the milliseconds a clone of the repository (WHAT
# clone), or reading its 50 MiB file over SSH (WHAT cat), took.
over_ssh() {
  local run
  case $1 in
    clone) run="rm -rf /tmp/clone; git clone -q root@\$HOST:$work/ssh/repo.git /tmp/clone" ;;
    cat) run="\$GIT_SSH_COMMAND root@\$HOST cat $work/ssh/work/blob > /dev/null" ;;
  esac
  local script="s=\$(date +%s%N); $run && echo \$(( (\$(date +%s%N) - s) / 1000000 ))"
  case $2 in
    direct) HOST=10.98.0.2 GIT_SSH_COMMAND="ssh -i $work/ssh/deploy -o IdentitiesOnly=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR" sh -c "$script" ;;
    proxy) on net exec "$gitsb" -- env HOST=git.test GIT_SSH_COMMAND="ssh -o BatchMode=yes" sh -c "$script" ;;
  esac
}
py="$(cat tests/fake_internet/latency.py)"
inside() { on net exec "$id" -- python3 -c "$py" "$@"; }
in_strict() { on net exec "$strict" -- python3 -c "$py" "$@"; }
in_ruled() { on net exec "$ruled" -- python3 -c "$py" "$@"; }
direct() { python3 tests/fake_internet/latency.py "$@"; }
row() { printf '%-52s p50 %8s ms  p99 %8s ms\n' "$1" $2; }
echo "== egress (proxy) vs direct, same machine"
row "keep-alive request, direct" "$(direct keepalive web.test 10.98.0.2 1000)"
row "keep-alive request, through the proxy" "$(inside keepalive web.test 10.98.0.2 1000)"
row "new connection + request, direct" "$(direct connect web.test 10.98.0.2 300)"
row "new connection + request, proxy (1 sandbox)" "$(inside connect web.test 10.98.0.2 300)"
row "new TLS connection + request, direct" "$(direct tls web.test 10.98.0.2 300 "$work/fake/ca.pem")"
row "new TLS connection + request, spliced" "$(inside tls web.test 10.98.0.2 300 /tmp/fake-ca.pem)"
row "new TLS connection + request, terminated" "$(inside tls api.test 10.98.0.2 300 -)"
row "new TLS connection + request, enforceRequestHost" "$(in_strict tls web.test 10.98.0.2 300 -)"
row "new TLS connection + request, client certificate" "$(inside tls mtls.test 10.98.0.2 300 - 8443)"
row "keep-alive request, http protocol rule" "$(in_ruled keepalive web.test 10.98.0.2 1000)"
echo "50 MiB over TLS under a 10 MiB/s limit: $(in_ruled bulk web.test 10.98.0.2 50 -) MiB/s"
for i in 1 2 3; do
  for what in clone cat; do
    d=$(over_ssh $what direct); p=$(over_ssh $what proxy)
    awk -v d="$d" -v p="$p" -v i="$i" -v w="$what" 'BEGIN { printf "50 MiB over SSH, %-5s (%s): direct %7.1f MiB/s, ssh_proxy %7.1f MiB/s (%.2f)\n", w, i, 50000 / d, 50000 / p, d / p }'
  done
done
for i in 1 2 3; do
  row "PostgreSQL query, reused connection, direct ($i)" "$(pg_query direct)"
  row "PostgreSQL query, reused connection, proxy login ($i)" "$(pg_query proxy)"
  printf '%-52s mean %7s ms\n' "new PostgreSQL connection (SCRAM), direct ($i)" "$(pg_connect direct)"
  printf '%-52s mean %7s ms\n' "new PostgreSQL connection (SCRAM), proxy login ($i)" "$(pg_connect proxy)"
done
# Throughput, and the CPU it took per GiB: the daemon's (the proxy's) and
# the whole machine's. On two shared cores throughput is noisy; the CPU a
# GiB costs is what a relay can change (the endpoints' share is fixed).
daemon=${pids[1]}
ticks() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }
machine() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
bulk() { # LABEL MIB COMMAND...
  local label=$1 mib=$2 d0 m0 r; shift 2
  d0=$(ticks); m0=$(machine)
  r=$("$@")
  awk -v l="$label" -v r="$r" -v d=$(( $(ticks) - d0 )) -v m=$(( $(machine) - m0 )) -v g="$mib" \
    'BEGIN { printf "%-44s %6s MiB/s  CPU s/GiB: proxy %.2f, machine %.2f\n", l, r, d / 100 * 1024 / g, m / 100 * 1024 / g }'
}
for i in 1 2 3; do
  bulk "300 MiB over TLS, direct (run $i)" 300 direct bulk web.test 10.98.0.2 300 "$work/fake/ca.pem"
  bulk "300 MiB over TLS, spliced (run $i)" 300 inside bulk web.test 10.98.0.2 300 /tmp/fake-ca.pem
  bulk "300 MiB over TLS, terminated (run $i)" 300 inside bulk api.test 10.98.0.2 300 -
  bulk "300 MiB over TLS, enforceRequestHost (run $i)" 300 in_strict bulk web.test 10.98.0.2 300 -
done
row "DNS answer from the resolver (cached)" "$(inside dns web.test 1000)"
for _ in $(seq 199); do
  other=$(on net create)
  on net policy set "$other" --allow web.test --allow '*.example.com' --allow 10.98.0.0/24 >/dev/null
done
row "new connection + request, proxy (200 sandboxes)" "$(inside connect web.test 10.98.0.2 300)"
echo "== network setup cost on create (same runs, cold creates)"
on net bench -i 30 --scale 1 | grep "create at N=1" | sed 's/^/with egress:    /'
on plain bench -i 30 --scale 1 | grep "create at N=1" | sed 's/^/without egress: /'
