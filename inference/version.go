package inference

import (
	"cmp"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Bundle versions that the fleet orders are DATE-N with an optional
// _SUFFIX: "2026.12.03-2_1f3a9c0e". DATE is the day the model was made
// (UTC), N counts models made from the same lineage on or after that day,
// and SUFFIX (lowercase letters and digits) tells apart two models made
// independently with the same DATE-N. Order is by DATE, then N; the suffix
// makes a version unique but not newer. Every character is one an MQTT
// topic level may hold: the version names the offer's chunk topics.
var versionRE = regexp.MustCompile(`^(\d{4})\.(\d{2})\.(\d{2})-(\d{1,9})(?:_([0-9a-z]{1,32}))?$`)

type orderedVersion struct {
	day time.Time
	n   int
}

func parseOrdered(v string) (orderedVersion, bool) {
	m := versionRE.FindStringSubmatch(v)
	if m == nil {
		return orderedVersion{}, false
	}
	day, err := time.Parse("2006.01.02", m[1]+"."+m[2]+"."+m[3])
	if err != nil {
		return orderedVersion{}, false
	}
	n, _ := strconv.Atoi(m[4])
	return orderedVersion{day, n}, true
}

// CompareVersions orders two bundle versions: -1 when a is older than b,
// 0 when neither is newer (equal DATE-N), +1 when a is newer. It fails for
// a version that is not DATE-N[_SUFFIX]: such a bundle cannot be ordered,
// so it cannot be offered as an update.
func CompareVersions(a, b string) (int, error) {
	va, ok := parseOrdered(a)
	if !ok {
		return 0, fmt.Errorf("version %q: want YYYY.MM.DD-N[_SUFFIX]", a)
	}
	vb, ok := parseOrdered(b)
	if !ok {
		return 0, fmt.Errorf("version %q: want YYYY.MM.DD-N[_SUFFIX]", b)
	}
	return cmp.Or(va.day.Compare(vb.day), cmp.Compare(va.n, vb.n)), nil
}

// NextVersion is the version of a model made at now from the incumbent
// version: today's date with N = 1, or, when the incumbent is from today or
// (clock skew) later, the incumbent's date with N + 1; suffix (may be
// empty) makes it unique. It is always newer than incumbent.
func NextVersion(incumbent string, now time.Time, suffix string) (string, error) {
	v, ok := parseOrdered(incumbent)
	if !ok {
		return "", fmt.Errorf("incumbent version %q: want YYYY.MM.DD-N[_SUFFIX] to make a newer one", incumbent)
	}
	today := now.UTC().Truncate(24 * time.Hour)
	next := orderedVersion{today, 1}
	if !today.After(v.day) {
		next = orderedVersion{v.day, v.n + 1}
	}
	out := fmt.Sprintf("%s-%d", next.day.Format("2006.01.02"), next.n)
	if suffix != "" {
		out += "_" + suffix
	}
	if _, ok := parseOrdered(out); !ok {
		return "", fmt.Errorf("version suffix %q: want 1 to 32 lowercase letters or digits", suffix)
	}
	return out, nil
}
