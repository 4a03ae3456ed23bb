package selection

import (
	"github.com/scopewatch/scopewatch/internal/testutil"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/feedback/wire"
)

func TestSelectorReasonsAndLimits(t *testing.T) {
	clk := testutil.NewClock(time.Date(2026, 11, 28, 23, 0, 0, 0, time.UTC))
	s := New(Config{Threshold: 0.5, Band: 0.1, MaxPerWindow: 1000, RandomRate: 0.01, DriftRate: 0.1, DailyBytes: 1 << 30, Seed: 1, Now: clk.Now})
	r := rand.New(rand.NewPCG(7, 7))
	counts := map[string]int{}
	uncertainCells := 0
	const n = 20000
	s.StartWindow(false)
	for i := 0; i < n; i++ {
		p := r.Float64()
		if math.Abs(p-0.5) <= 0.1 || Entropy(p) >= 0.95 {
			uncertainCells++
		}
		if i == n/2 {
			s.StartWindow(true)
		}
		if i%500 == 0 && i != n/2 {
			s.StartWindow(i >= n/2)
		}
		if reason, ok := s.Consider(p, 1000); ok {
			counts[reason]++
			if reason == wire.ReasonUncertainty && math.Abs(p-0.5) > 0.1 && Entropy(p) < 0.95 {
				t.Fatalf("p=%.3f selected as uncertain", p)
			}
		}
	}
	if counts[wire.ReasonUncertainty] != uncertainCells {
		t.Errorf("uncertain selected %d, want all %d", counts[wire.ReasonUncertainty], uncertainCells)
	}
	// Drift only in the second half, at 10% of the non-uncertain cells.
	nonUncertainDrifted := float64(n-uncertainCells) / 2
	if got := float64(counts[wire.ReasonDrift]); got < 0.07*nonUncertainDrifted || got > 0.13*nonUncertainDrifted {
		t.Errorf("drift selected %v of about %v cells at rate 0.1", got, nonUncertainDrifted)
	}
	if counts[wire.ReasonRandom] < 50 || counts[wire.ReasonRandom] > 200 {
		t.Errorf("random selected %d, want about 1%% of the rest", counts[wire.ReasonRandom])
	}

	// Window cap.
	capped := New(Config{MaxPerWindow: 5, Seed: 1})
	capped.StartWindow(false)
	got := 0
	for i := 0; i < 100; i++ {
		if _, ok := capped.Consider(0.5, 10); ok {
			got++
		}
	}
	if got != 5 {
		t.Fatalf("window cap: %d selected, want 5", got)
	}
	capped.StartWindow(false)
	if _, ok := capped.Consider(0.5, 10); !ok {
		t.Fatal("new window did not reset the cap")
	}

	// Daily byte budget, reset at UTC midnight.
	budget := New(Config{MaxPerWindow: 1000, DailyBytes: 3000, Now: clk.Now})
	budget.StartWindow(false)
	got = 0
	for i := 0; i < 10; i++ {
		if _, ok := budget.Consider(0.5, 1000); ok {
			got++
		}
	}
	if got != 3 {
		t.Fatalf("daily budget: %d selected, want 3", got)
	}
	clk.Add(2 * time.Hour)
	if _, ok := budget.Consider(0.5, 1000); !ok {
		t.Fatal("budget not reset on a new day")
	}
	_, skipped := budget.Counts()
	if skipped["daily_bytes"] != 7 {
		t.Fatalf("skipped %v", skipped)
	}
}

func TestSelectorStratifiedAndReproducible(t *testing.T) {
	run := func() []int {
		s := New(Config{RandomRate: 1, MaxPerWindow: 100, Strata: 10, Seed: 3})
		s.StartWindow(false)
		perStratum := make([]int, 10)
		// Mostly confident negatives: stratification still gives every
		// stratum its share instead of filling the window with p~0.
		r := rand.New(rand.NewPCG(1, 2))
		for i := 0; i < 5000; i++ {
			p := r.Float64() * r.Float64() * r.Float64()
			if i%50 == 0 {
				p = r.Float64()
			}
			if reason, ok := s.Consider(p, 1); ok && reason == wire.ReasonRandom {
				perStratum[min(int(p*10), 9)]++
			}
		}
		return perStratum
	}
	a, b := run(), run()
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("not reproducible: %v vs %v", a, b)
		}
		if a[i] > 10 {
			t.Fatalf("stratum %d got %d, cap is 10: %v", i, a[i], a)
		}
	}
	// Stratum 0 holds ~80% of the cells but only its quota; the rare high
	// scores are still represented.
	if a[0] != 10 || a[9] == 0 {
		t.Fatalf("strata not all represented: %v", a)
	}
}

// TestSelectorRestoresDayUsage: bytes selected before a restart still
// count against the same day's budget, and not against the next day's.
func TestSelectorRestoresDayUsage(t *testing.T) {
	clk := testutil.NewClock(time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC))
	cfg := Config{Threshold: 0.5, DailyBytes: 1000, Now: clk.Now}
	before := New(cfg)
	before.StartWindow(false)
	if _, ok := before.Consider(0.5, 900); !ok {
		t.Fatal("first uncertain cell not selected")
	}
	day, n := before.DayUsage()
	if day != "2026-11-28" || n != 900 {
		t.Fatalf("DayUsage = %q %d", day, n)
	}
	after := New(cfg)
	after.RestoreDayUsage(day, n)
	after.StartWindow(false)
	if _, ok := after.Consider(0.5, 200); ok {
		t.Fatal("restored budget ignored: 900 + 200 bytes selected on a 1000-byte day")
	}
	clk.Add(24 * time.Hour)
	if _, ok := after.Consider(0.5, 200); !ok {
		t.Fatal("the next day started with the previous day's bytes")
	}
}
