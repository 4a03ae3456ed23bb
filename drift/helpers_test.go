package drift

import (
	"context"
	"math"
	"testing"
)

// synthCells draws n classified cells like a confident classifier's output:
// scores pile up at values that round to exactly 0 or 1 in float32 (ties),
// labels with the given prevalence, features whose mean depends on the class
// and on shift (an embedding-level drift knob).
func synthCells(n int, prevalence, shift float64, seed uint64) ([]float64, []int, [][]float32) {
	r := newRand(seed, 99)
	scores := make([]float64, n)
	labels := make([]int, n)
	feats := make([][]float32, n)
	for i := range n {
		y := 0
		if r.Float64() < prevalence {
			y = 1
		}
		// logit ~ normal around +-6 with 10% hard cases near the boundary
		mu := -6.0
		if y == 1 {
			mu = 5
		}
		if r.Float64() < 0.1 {
			mu /= 4
		}
		logit := mu + 2.5*normal(r) + shift
		scores[i] = float64(float32(1 / (1 + math.Exp(-logit))))
		labels[i] = y
		f := make([]float32, 24)
		for j := range f {
			f[j] = float32(normal(r) + float64(y)*0.8*float64(j%3) + shift*0.3)
		}
		feats[i] = f
	}
	return scores, labels, feats
}

func smallBaseline(t testing.TB, ert, warn int, windows []int, sims int, withFeatures bool) *Baseline {
	t.Helper()
	s, l, f := synthCells(1500, 0.2, 0, 1)
	if !withFeatures {
		f = nil
	}
	b, err := BuildBaseline(context.Background(), s, l, f, 0.5, BaselineConfig{
		Seed: 3, BootstrapReps: 200, DescriptiveSims: 100, MaxReference: 1000,
		Detector: CalibrationConfig{ERT: ert, WarnERT: warn, Windows: windows, Sims: sims},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tinyBaseline is a minimal valid baseline (40 reference rows) for fuzz
// seeds: small inputs keep the fuzzer fast.
func tinyBaseline(t testing.TB) *Baseline {
	t.Helper()
	s, l, f := synthCells(200, 0.3, 0, 1)
	for i := range f {
		f[i] = f[i][:4]
	}
	b, err := BuildBaseline(context.Background(), s, l, f, 0.5, BaselineConfig{
		Seed: 3, BootstrapReps: 20, DescriptiveSims: 10, MaxReference: 40, ProjectionDim: 2, RFFDim: 4,
		Detector: CalibrationConfig{ERT: 50, Windows: []int{5, 10}, Sims: 100},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
