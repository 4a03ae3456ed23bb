#!/bin/sh
# scopewatch-acl.sh writes the mosquitto ACL of a scopewatch fleet from a
# list of identities, one per line (see identities.example):
#
#   device SITE DEVICE   a microscope (scopewatch serve); certificate CN SITE.DEVICE
#   collector NAME       scopewatch collect; certificate CN NAME
#   tuner NAME           scopewatch tune worker (it also collects, unless --collect=false)
#   labeller NAME        scopewatch feedback label
#   monitor NAME         dashboards and alert routing: read only
#
# SITE, DEVICE and NAME are 1-64 characters of a-z, 0-9, '-' and '_', as
# the daemon's site and device. A NAME has no '.', so no service can hold a
# device's identity. '#' starts a comment.
#
# usage: scopewatch-acl.sh [-r TOPIC_ROOT] [IDENTITIES] > scopewatch.acl
#
# -r is the fleet's mqtt.topic_root (default scopewatch/v1). The ACL goes to
# standard output; on a bad line the script names it, writes nothing and
# exits 2, so `scopewatch-acl.sh list > new && mv new scopewatch.acl` never
# installs half a file.
#
# Why one block per identity rather than mosquitto "pattern" lines: a
# pattern substitutes the whole username (%u) or client id (%c), and a device
# needs rules at two levels, {site}/{device}/... for its own topics and
# {site}/... for its site's offers and retune requests. One identity cannot
# be split into both (mosquitto 2.0.11 does substitute a username holding
# '/', but only as a whole), and the client id is whatever the client
# chooses. So every identity is listed by name, and a certificate from the
# CA whose CN is not listed may connect but can neither publish nor receive
# anything.
set -eu

root=scopewatch/v1
while getopts r: opt; do
	case $opt in
	r) root=$OPTARG ;;
	*)
		echo "usage: $0 [-r TOPIC_ROOT] [IDENTITIES]" >&2
		exit 2
		;;
	esac
done
shift $((OPTIND - 1))
if [ $# -gt 1 ]; then
	echo "usage: $0 [-r TOPIC_ROOT] [IDENTITIES]" >&2
	exit 2
fi
src=${1:--}

# The whole ACL is built in memory and printed only when every line was
# good.
exec awk -v root="$root" -v src="$src" '
function fail(msg) {
	printf "scopewatch-acl: %s\n", msg > "/dev/stderr"
	failed = 1
	exit 2
}
function level(s) { return length(s) >= 1 && length(s) <= 64 && s ~ /^[a-z0-9_-]+$/ }
function user(cn, what) {
	if (cn in seen)
		fail(sprintf("%s:%d: identity %s already listed on line %d", where, NR, cn, seen[cn]))
	seen[cn] = NR
	out = out "\n# " what "\nuser " cn "\n"
	n++
}
function rule(access, topic) { out = out "topic " access " " root "/" topic "\n" }
BEGIN {
	where = src == "-" ? "stdin" : src
	sub(/^\/+/, "", root)
	sub(/\/+$/, "", root)
	# As mqttconn.NewTopics: one to three levels, so that a device topic
	# stays within seven.
	nl = split(root, parts, "/")
	if (nl < 1 || nl > 3)
		fail(sprintf("topic root %s: want 1-3 levels", root))
	for (i = 1; i <= nl; i++)
		if (parts[i] !~ /^[a-z0-9._-]+$/)
			fail(sprintf("topic root %s: level \"%s\" may hold only a-z, 0-9, \".\", \"-\" and \"_\"", root, parts[i]))
}
{
	sub(/#.*/, "")
	if (NF == 0)
		next
	role = $1
	if (role == "device") {
		if (NF != 3)
			fail(sprintf("%s:%d: want \"device SITE DEVICE\"", where, NR))
		site = $2; dev = $3
		if (!level(site) || !level(dev))
			fail(sprintf("%s:%d: site and device must be 1-64 characters of a-z, 0-9, \"-\" and \"_\"", where, NR))
		user(site "." dev, "device " dev " of site " site)
		# Its own topics. Reading its status lets the daemon notice a
		# second process publishing as this device.
		rule("readwrite", site "/" dev "/status")
		rule("write", site "/" dev "/alert")
		rule("write", site "/" dev "/result")
		rule("write", site "/" dev "/feedback")
		rule("read", site "/" dev "/label")
		# Its site: asking for a retune, taking the offered models.
		rule("write", site "/retune/request")
		rule("read", site "/model/offer")
		rule("read", site "/model/chunk/#")
		next
	}
	if (NF != 2)
		fail(sprintf("%s:%d: want \"%s NAME\" (roles: device, collector, tuner, labeller, monitor)", where, NR, role))
	name = $2
	if (!level(name))
		fail(sprintf("%s:%d: name %s must be 1-64 characters of a-z, 0-9, \"-\" and \"_\" (no \".\": that is a device)", where, NR, name))
	if (role == "collector") {
		user(name, "collector (scopewatch collect)")
		rule("read", "+/+/feedback")
		rule("read", "+/+/label")
	} else if (role == "tuner") {
		user(name, "tuning worker (scopewatch tune worker)")
		rule("read", "+/retune/request")
		rule("write", "+/retune/event")
		# Offers and chunks are retained; clearing an old version is an
		# empty retained publish, which is a write too.
		rule("write", "+/model/offer")
		rule("write", "+/model/chunk/#")
		# What it collects unless run with --collect=false.
		rule("read", "+/+/feedback")
		rule("read", "+/+/label")
	} else if (role == "labeller") {
		user(name, "labeller (scopewatch feedback label)")
		rule("write", "+/+/label")
	} else if (role == "monitor") {
		user(name, "monitor (dashboards, alert routing)")
		rule("read", "+/+/status")
		rule("read", "+/+/alert")
		rule("read", "+/+/result")
		rule("read", "+/retune/event")
		rule("read", "+/model/offer")
	} else {
		fail(sprintf("%s:%d: unknown role %s (roles: device, collector, tuner, labeller, monitor)", where, NR, role))
	}
}
END {
	if (failed)
		exit 2
	if (n == 0)
		fail(sprintf("%s: no identities listed", where))
	printf "# mosquitto ACL for the scopewatch fleet under %s/, written by\n", root
	printf "# systemd/mosquitto/scopewatch-acl.sh: edit the identities list and run it\n"
	printf "# again rather than this file. Anything not granted here is refused.\n"
	printf "%s", out
}
' "$src"
