package inference

import (
	"testing"
	"time"
)

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"2026.11.28-2", "2026.11.28-2", 0},
		{"2026.11.28-10", "2026.11.28-9", 1},
		{"2026.11.28-2", "2026.12.01-1", -1},
		{"2026.12.01-1_abc", "2026.12.01-1_def", 0},
		{"2027.01.01-1", "2026.12.31-99", 1},
	} {
		got, err := CompareVersions(c.a, c.b)
		if err != nil || got != c.want {
			t.Errorf("CompareVersions(%s, %s) = %d, %v; want %d", c.a, c.b, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "v1", "2026.13.01-1", "2026.11.28", "2026.11.28-1_", "2026.11.28-1_a-b", "2026.11.28-1+abc", "2026.11.28-1_ABC"} {
		if _, err := CompareVersions(bad, "2026.11.28-1"); err == nil {
			t.Errorf("CompareVersions(%q) accepted", bad)
		}
	}
}

func TestNextVersion(t *testing.T) {
	day := func(s string) time.Time { v, _ := time.Parse(time.RFC3339, s); return v }
	for _, c := range []struct {
		inc  string
		now  time.Time
		suf  string
		want string
	}{
		{"2026.11.28-2", day("2026-12-03T15:00:00Z"), "", "2026.12.03-1"},
		{"2026.12.03-1_aa", day("2026-12-03T23:59:00Z"), "bb", "2026.12.03-2_bb"},
		{"2026.12.05-4", day("2026-12-03T10:00:00Z"), "", "2026.12.05-5"}, // clock behind
	} {
		got, err := NextVersion(c.inc, c.now, c.suf)
		if err != nil || got != c.want {
			t.Fatalf("NextVersion(%s) = %s, %v; want %s", c.inc, got, err, c.want)
		}
		if o, _ := CompareVersions(got, c.inc); o != 1 {
			t.Fatalf("%s is not newer than %s", got, c.inc)
		}
		if err := checkVersion(got); err != nil {
			t.Fatalf("%s is not a valid manifest version: %v", got, err)
		}
	}
	if _, err := NextVersion("custom", time.Now(), ""); err == nil {
		t.Fatal("an unordered incumbent version was accepted")
	}
}
