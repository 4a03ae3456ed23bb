package tuning

import (
	"math"
	"strings"
	"testing"
)

func testSpace(t *testing.T) *Space {
	t.Helper()
	s, err := Decode(strings.NewReader(`name: space
objective: {builtin: head, metric: val_loss, direction: minimize}
parameters:
  - {name: optimizer, role: scientific, type: categorical, values: [adam, sgd, rmsprop]}
  - {name: lr, role: nuisance, type: float, min: 1e-4, max: 1e-1, log: true}
  - {name: dropout, role: nuisance, type: float, min: 0, max: 0.5}
  - {name: units, role: nuisance, type: int, min: 1, max: 4}
  - {name: width, role: nuisance, type: int, min: 8, max: 512, log: true}
  - {name: batch_size, role: fixed, value: 248}
budget: {trials: 10}
`))
	if err != nil {
		t.Fatal(err)
	}
	return NewSpace(s)
}

func TestSpaceMapsCorners(t *testing.T) {
	sp := testSpace(t)
	if sp.Dim() != 5 {
		t.Fatalf("dim = %d", sp.Dim())
	}
	lo := sp.Params([]float64{0, 0, 0, 0, 0})
	hi := sp.Params([]float64{1, 1, 1, 1, 1})
	want := []struct {
		name   string
		lo, hi any
	}{
		{"optimizer", "adam", "rmsprop"},
		{"lr", 1e-4, 1e-1},
		{"dropout", 0.0, 0.5},
		{"units", int64(1), int64(4)},
		{"width", int64(8), int64(512)},
		{"batch_size", 248, 248},
	}
	for _, w := range want {
		if !approxEqual(lo[w.name], w.lo) || !approxEqual(hi[w.name], w.hi) {
			t.Errorf("%s: corners %v, %v; want %v, %v", w.name, lo[w.name], hi[w.name], w.lo, w.hi)
		}
	}
}

// approxEqual compares values exactly, but floats to 1e-9 relative.
func approxEqual(a, b any) bool {
	fa, oka := a.(float64)
	fb, okb := b.(float64)
	if oka && okb {
		return math.Abs(fa-fb) <= 1e-9*math.Max(math.Abs(fa), math.Abs(fb))
	}
	return sameValue(a, b)
}

// TestSpaceEqualShares checks that every int and categorical value owns an
// equal share of its coordinate (on the log scale for log ints).
func TestSpaceEqualShares(t *testing.T) {
	sp := testSpace(t)
	counts := map[string]map[any]int{"optimizer": {}, "units": {}}
	const n = 12000
	for i := 0; i < n; i++ {
		x := (float64(i) + 0.5) / n
		ps := sp.Params([]float64{x, 0.5, 0.5, x, 0.5})
		counts["optimizer"][ps["optimizer"]]++
		counts["units"][ps["units"]]++
	}
	for name, c := range counts {
		for v, k := range c {
			share := float64(k) / n
			want := 1 / float64(len(c))
			if math.Abs(share-want) > 0.001 {
				t.Errorf("%s=%v holds %.4f of the coordinate, want %.4f", name, v, share, want)
			}
		}
	}
	if len(counts["units"]) != 4 || len(counts["optimizer"]) != 3 {
		t.Fatalf("values reached: %v", counts)
	}
}

func TestSpaceRoundTrip(t *testing.T) {
	sp := testSpace(t)
	for i := 0; i < 200; i++ {
		u := []float64{float64(i%7) / 7, float64(i) / 200, float64(i%13) / 13, float64(i%5) / 5, float64(i%17) / 17}
		ps := sp.Params(u)
		back, err := sp.Point(ps)
		if err != nil {
			t.Fatal(err)
		}
		again := sp.Params(back)
		for k, v := range ps {
			if f, ok := v.(float64); ok {
				if math.Abs(f-again[k].(float64)) > 1e-9*math.Max(1, math.Abs(f)) {
					t.Fatalf("%s: %v -> %v", k, v, again[k])
				}
			} else if !sameValue(v, again[k]) {
				t.Fatalf("%s: %v -> %v", k, v, again[k])
			}
		}
	}
}

func TestSpacePointRefuses(t *testing.T) {
	sp := testSpace(t)
	good := Params{"optimizer": "sgd", "lr": 0.01, "dropout": 0.1, "units": 2.0, "width": 64.0}
	if _, err := sp.Point(good); err != nil {
		t.Fatalf("journal-typed params refused: %v", err)
	}
	for name, change := range map[string]func(Params){
		"missing":         func(p Params) { delete(p, "lr") },
		"unknown choice":  func(p Params) { p["optimizer"] = "adagrad" },
		"out of range":    func(p Params) { p["dropout"] = 0.9 },
		"fractional int":  func(p Params) { p["units"] = 2.5 },
		"not a number":    func(p Params) { p["lr"] = "fast" },
		"non-positive lr": func(p Params) { p["lr"] = 0.0 },
	} {
		ps := Params{}
		for k, v := range good {
			ps[k] = v
		}
		change(ps)
		if _, err := sp.Point(ps); err == nil {
			t.Errorf("%s: accepted %v", name, ps)
		}
	}
}
