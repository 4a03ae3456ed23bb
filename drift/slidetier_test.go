package drift

import (
	"context"
	"testing"
)

// TestSlideTier: calibrated on reference slides, the between-slide tier
// runs about its ERT (in slides) on new nominal slides, catches a sustained
// shift of every slide within a few slides, and does not alarm on one odd
// slide alone (each slide's contribution is clipped).
func TestSlideTier(t *testing.T) {
	s, l, ids := slideCells(60, 100, 1)
	b, err := BuildBaseline(context.Background(), s, l, nil, 0.5, BaselineConfig{
		Seed: 5, BootstrapReps: 20, DescriptiveSims: 10, Slides: ids, MaxReference: len(s),
		Detector: CalibrationConfig{ERT: 300, WarnERT: 100, Windows: []int{20, 100}, Sims: 200},
	})
	if err != nil {
		t.Fatal(err)
	}
	tier, err := NewSlideTier(b, SlideTierConfig{ERT: 200, Sims: 1000, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	summaries := func(seed uint64, prevalence float64) []SlideSummary {
		ns, _, nids := slideCells(300, 100, seed)
		if prevalence > 0 {
			// A share of every slide's cells turned confidently positive:
			// more parasitized cells than any reference slide has.
			r := newRand(seed, 9)
			for i := range ns {
				if r.Float64() < prevalence {
					ns[i] = 0.99
				}
			}
		}
		sums, err := b.SlideSummaries(&EvalRows{Scores: ns, Slides: nids})
		if err != nil {
			t.Fatal(err)
		}
		return sums
	}
	null := summaries(2, 0)
	res := tier.EvalSlideTier(null, nil, 400, 0, 0, 0, 7)
	t.Logf("drift-free: mean run %.1f slides (ERT 200), by signal %v", res.MeanRun, res.BySignal)
	if res.MeanRun < 140 || res.MeanRun > 260 {
		t.Errorf("mean drift-free run %.1f slides, want 200 +- 30%%", res.MeanRun)
	}
	shifted := summaries(4, 0.3)
	res = tier.EvalSlideTier(null, shifted, 200, 5, 20, 5, 8)
	t.Logf("every slide shifted: %d of %d within 5 slides, mean delay %.2f", res.Within, res.Runs, res.MeanDelay)
	if res.Within < 190 {
		t.Errorf("sustained shift: %d of 200 detected within 5 slides", res.Within)
	}
	res = tier.EvalSlideTier(null, shifted, 200, 5, 1, 1, 9)
	t.Logf("one shifted slide: %d of %d alarmed on it", res.Within, res.Runs)
	if res.Within > 12 { // 8 measured; nominal slides alarm on 1 in 200
		t.Errorf("one odd slide alarmed %d of 200 times by itself", res.Within)
	}
}
