package drift

import (
	"fmt"
	"slices"
)

// DescriptiveThreshold holds, for one window size, the 99th percentile of
// each descriptive statistic over simulated drift-free windows of that size.
// These statistics depend strongly on the window size, which is why a fixed
// threshold (PSI 0.2, say) is meaningless; they are for people to read, the
// sequential tests are what alarm.
type DescriptiveThreshold struct {
	Window        int     `json:"window"`
	Sims          int     `json:"sims"`
	PSI           float64 `json:"psi"`
	JensenShannon float64 `json:"jensen_shannon"`
	Wasserstein   float64 `json:"wasserstein"`
	KS            float64 `json:"ks"`
	// 1st percentiles of the label-free estimate over the same windows: a
	// drift-free window of this size falls below them 1% of the time.
	AccuracyLow    float64 `json:"accuracy_low"`
	SensitivityLow float64 `json:"sensitivity_low"`
	SpecificityLow float64 `json:"specificity_low"`
}

func (d *DescriptiveThreshold) validate() error {
	for _, v := range []float64{d.AccuracyLow, d.SensitivityLow, d.SpecificityLow} {
		if !(v >= 0 && v <= 1) {
			return fmt.Errorf("estimate percentile %v: want [0, 1]", v)
		}
	}
	if d.Window < 1 || d.Sims < 1 {
		return fmt.Errorf("window %d, sims %d: want positive", d.Window, d.Sims)
	}
	for _, v := range []float64{d.PSI, d.JensenShannon, d.Wasserstein, d.KS} {
		if !finite(v) || v < 0 {
			return fmt.Errorf("threshold %v: want finite and >= 0", v)
		}
	}
	return nil
}

// DescriptiveStats are the descriptive statistics of one window against the
// baseline, with thresholds simulated at the window's actual size.
type DescriptiveStats struct {
	N             int                  `json:"n"`
	PSI           float64              `json:"psi"`
	JensenShannon float64              `json:"jensen_shannon"`
	Wasserstein   float64              `json:"wasserstein"`
	KS            float64              `json:"ks"`
	Threshold     DescriptiveThreshold `json:"threshold"`
}

// Above lists the statistics above their simulated 99th percentile.
func (s DescriptiveStats) Above() []string {
	var a []string
	if s.PSI > s.Threshold.PSI {
		a = append(a, "psi")
	}
	if s.JensenShannon > s.Threshold.JensenShannon {
		a = append(a, "jensen_shannon")
	}
	if s.Wasserstein > s.Threshold.Wasserstein {
		a = append(a, "wasserstein")
	}
	if s.KS > s.Threshold.KS {
		a = append(a, "ks")
	}
	return a
}

type descValues struct{ psi, js, w, ks float64 }

func (b *Baseline) describe(live []float64) descValues {
	hb, hl := histogram(b.Scores, scoreBins), histogram(live, scoreBins)
	return descValues{PSI(hb, hl), JensenShannon(hb, hl), Wasserstein1D(b.Scores, live), KS2Samp(b.Scores, live)}
}

// simulateDescriptive draws sims drift-free windows of size n with the
// detector's null model and returns the 99th percentiles.
func (b *Baseline) simulateDescriptive(n, sims int, seed uint64) DescriptiveThreshold {
	null, slideCells := NullExchangeable, [2]int{}
	if b.Detector != nil {
		null, slideCells = b.Detector.Null, b.Detector.SlideCells
	}
	st := newNullStream(b.ref, null, slideCells)
	var psi, js, w, ks, acc, sens, spec []float64
	win := make([]float64, n)
	for s := range sims {
		st.reset(newRand(seed, uint64(s)))
		for i := range win {
			_, win[i], _ = st.next()
		}
		v := b.describe(win)
		psi, js, w, ks = append(psi, v.psi), append(js, v.js), append(w, v.w), append(ks, v.ks)
		var c [4]float64
		for _, x := range win {
			c = addConfusion(c, b.Calibration.Apply(x), x >= b.Threshold, 1)
		}
		e := estimateFrom(c, n)
		acc, sens, spec = appendFinite(acc, e.Accuracy), appendFinite(sens, e.Sensitivity), appendFinite(spec, e.Specificity)
	}
	q := func(v []float64, p float64) float64 {
		if len(v) == 0 {
			return 0
		}
		slices.Sort(v)
		return quantileSorted(v, p)
	}
	return DescriptiveThreshold{Window: n, Sims: sims, PSI: q(psi, 0.99), JensenShannon: q(js, 0.99), Wasserstein: q(w, 0.99), KS: q(ks, 0.99),
		AccuracyLow: q(acc, 0.01), SensitivityLow: q(sens, 0.01), SpecificityLow: q(spec, 0.01)}
}

// DescriptiveThresholdFor returns the thresholds for windows of n scores:
// stored ones when the baseline has them for n, simulated (200 windows,
// deterministic) otherwise.
func (b *Baseline) DescriptiveThresholdFor(n int) DescriptiveThreshold {
	for _, d := range b.Descriptive {
		if d.Window == n {
			return d
		}
	}
	return b.simulateDescriptive(n, 200, splitmix64(b.Detector.Seed^uint64(n)))
}

// Describe computes the descriptive statistics of live scores against the
// baseline, with thresholds for len(live).
func (b *Baseline) Describe(live []float64) DescriptiveStats {
	v := b.describe(live)
	return DescriptiveStats{N: len(live), PSI: v.psi, JensenShannon: v.js, Wasserstein: v.w, KS: v.ks, Threshold: b.DescriptiveThresholdFor(len(live))}
}

func appendFinite(v []float64, x float64) []float64 {
	if finite(x) {
		return append(v, x)
	}
	return v
}
