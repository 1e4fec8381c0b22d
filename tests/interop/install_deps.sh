#!/bin/sh
# Installs GAVO DaCHS (Debian's gavodachs2-server) and pg_sphere for the interop tests.
#
# Idempotent and unattended (CI): installs only the packages that are missing, never
# upgrades an installed postgresql-15 (bookworm-security's 15.20 breaks pg_sphere 1.2.0's
# extension script, see the pg_sphere step), and keeps the package from starting its own
# server (the tests start DaCHS on a free port of 127.0.0.1).
#
# When this machine cannot install Debian packages (not root, no apt, no package source),
# it prints one line "cannot install Debian packages here: <why>" and exits 0, so that
# `make test` goes on and the interop tests skip with that line as the reason. Any other
# failure exits non-zero with the tail of the apt log.
set -eu

PACKAGES="postgresql-15-pgsphere gavodachs2-server"
PGVERSION=15
PGSPHERE_SQL=/usr/share/postgresql/$PGVERSION/extension/pg_sphere--1.2.0.sql
LOG=${TMPDIR:-/tmp}/obsharvest-interop-deps.log

cannot() {
    echo "cannot install Debian packages here: $*"
    exit 0
}

installed() {  # package fully installed and configured?
    [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

all_installed() {
    for p in $PACKAGES; do installed "$p" || return 1; done
    [ -d /var/gavo/etc ]
}

if command -v dpkg-query >/dev/null 2>&1 && all_installed; then
    echo "interop-deps: DaCHS $(dpkg-query -W -f='${Version}' gavodachs2-server) and pg_sphere are installed"
    exit 0
fi

[ "$(id -u)" = 0 ] || cannot "not root (DaCHS needs gavodachs2-server from apt; run 'make interop-deps' as root)"
command -v apt-get >/dev/null 2>&1 || cannot "no apt-get (not a Debian system)"
command -v dpkg-query >/dev/null 2>&1 || cannot "no dpkg"
command -v pg_ctlcluster >/dev/null 2>&1 || cannot "no pg_ctlcluster (postgresql-$PGVERSION is expected to be installed)"
pg_lsclusters -h 2>/dev/null | grep -q "^$PGVERSION  *main " \
    || cannot "no PostgreSQL $PGVERSION cluster 'main'"

export DEBIAN_FRONTEND=noninteractive
APT="apt-get -qq -y --no-install-recommends -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
: >"$LOG"

fail() {
    echo "interop-deps: $* (last lines of $LOG:)" >&2
    tail -n 25 "$LOG" >&2
    exit 1
}

# Leave the machine as found: what this script starts or writes, it undoes on exit.
STARTED_PG=no
OWN_POLICY=no
cleanup() {
    [ "$OWN_POLICY" = no ] || rm -f "$POLICY"
    [ "$STARTED_PG" = no ] || pg_ctlcluster "$PGVERSION" main stop >>"$LOG" 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The package's postinst creates the gavo database and runs `dachs init`: PostgreSQL must
# be up (processes do not survive from one CI step to the next; the tests start it again).
if ! pg_ctlcluster "$PGVERSION" main status >/dev/null 2>&1; then
    pg_ctlcluster "$PGVERSION" main start >>"$LOG" 2>&1 || fail "cannot start PostgreSQL $PGVERSION"
    STARTED_PG=yes
fi

# Keep invoke-rc.d from starting DaCHS on its default port during the install (Debian's
# policy-rc.d mechanism); an existing policy (e.g. Docker's) is left alone.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# obsharvest interop-deps: no service starts during the install\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    OWN_POLICY=yes
fi

candidate() {
    apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p'
}
need_update=no
for p in $PACKAGES; do
    c=$(candidate "$p")
    [ -n "$c" ] && [ "$c" != "(none)" ] || need_update=yes
done
# Package lists are fetched when a package is unknown, and always on CI (a fresh machine's
# lists may name versions the mirror no longer has).
if [ "$need_update" = yes ] || [ "${CI:-}" = true ]; then
    apt-get -qq -o DPkg::Lock::Timeout=300 update >>"$LOG" 2>&1 \
        || cannot "apt-get update failed: $(grep -E '^(E|W):' "$LOG" | tail -n 1)"
fi
for p in $PACKAGES; do
    c=$(candidate "$p")
    [ -n "$c" ] && [ "$c" != "(none)" ] || cannot "no apt source offers $p"
done

# A previous install may have stopped half-way (e.g. in gavodachs2-server's postinst).
dpkg --configure -a >>"$LOG" 2>&1 || true

# 1. pg_sphere alone: install, then check its extension script loads on this PostgreSQL.
if ! installed postgresql-15-pgsphere; then
    echo "interop-deps: installing postgresql-15-pgsphere"
    $APT install postgresql-15-pgsphere >>"$LOG" 2>&1 || fail "apt-get install postgresql-15-pgsphere failed"
fi

probe_pgsphere() {  # prints psql's error output; exit status of CREATE EXTENSION
    db=obsharvest_pgsphere_probe
    su postgres -c "dropdb --if-exists $db; createdb $db" >/dev/null 2>&1 || return 0
    status=0
    su postgres -c "psql -X -q -v ON_ERROR_STOP=1 -d $db -c 'CREATE EXTENSION pg_sphere'" 2>&1 || status=$?
    su postgres -c "dropdb --if-exists $db" >/dev/null 2>&1 || true
    return $status
}

if ! out=$(probe_pgsphere); then
    case "$out" in
    *"is already the commutator"*)
        # PostgreSQL >= 15.20 refuses the two legacy '@' operators on smoc that name '@>'
        # as commutator (and '!<@' as negator) when '<@' already claims them. Those two
        # lines are dropped from the '@' (.., smoc) definitions; '<@'/'@>' stay as they are.
        echo "interop-deps: patching $PGSPHERE_SQL for PostgreSQL $(pg_config --version 2>/dev/null | cut -d' ' -f2 || echo "$PGVERSION") (legacy @ operators on smoc)"
        cp -n "$PGSPHERE_SQL" "$PGSPHERE_SQL.orig"
        awk '
            /^CREATE OPERATOR @ \(/ { inop = 1; buf = $0 "\n"; smoc = 0; next }
            inop {
                buf = buf $0 "\n"
                if ($0 ~ /RIGHTARG *= *smoc/) smoc = 1
                if ($0 ~ /^\);/) {
                    if (smoc) gsub(/ *(COMMUTATOR|NEGATOR) *= *[^\n]*\n/, "", buf)
                    printf "%s", buf; inop = 0
                }
                next
            }
            { print }
        ' "$PGSPHERE_SQL.orig" >"$PGSPHERE_SQL.new"
        mv "$PGSPHERE_SQL.new" "$PGSPHERE_SQL"
        out=$(probe_pgsphere) || fail "pg_sphere still does not load after the patch: $out"
        ;;
    *) echo "$out" >>"$LOG"; fail "CREATE EXTENSION pg_sphere fails" ;;
    esac
fi

# 2. DaCHS itself; its postinst creates the gavo database, roles and /var/gavo.
if ! installed gavodachs2-server || [ ! -d /var/gavo/etc ]; then
    echo "interop-deps: installing gavodachs2-server (DaCHS)"
    if installed gavodachs2-server; then  # installed, but /var/gavo went away: redo its init
        mkdir -p /var/gavo && chown dachsroot /var/gavo
        su dachsroot -c "dachs init" >>"$LOG" 2>&1 || fail "dachs init failed"
    else
        $APT install gavodachs2-server >>"$LOG" 2>&1 || fail "apt-get install gavodachs2-server failed"
    fi
fi
all_installed || fail "gavodachs2-server is not fully installed"
echo "interop-deps: DaCHS $(dpkg-query -W -f='${Version}' gavodachs2-server) and pg_sphere are installed"
