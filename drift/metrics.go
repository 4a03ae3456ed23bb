package drift

import (
	"math"
	"slices"
	"sort"
)

// Interval is a point estimate with a 95% bootstrap percentile interval.
type Interval struct {
	Value float64 `json:"value"`
	Lo    float64 `json:"lo"`
	Hi    float64 `json:"hi"`
}

// Metrics are the classifier's test-set metrics at its decision threshold.
type Metrics struct {
	N             int      `json:"n"`
	Positives     int      `json:"positives"`
	Accuracy      Interval `json:"accuracy"`
	Sensitivity   Interval `json:"sensitivity"`
	Specificity   Interval `json:"specificity"`
	AUC           Interval `json:"auc"`
	BootstrapReps int      `json:"bootstrap_reps"`
	BootstrapSeed uint64   `json:"bootstrap_seed"`
}

// weightedMetrics computes accuracy, sensitivity, specificity and AUC with
// integer case weights (a bootstrap resample is a weight vector), in one pass
// over the cases sorted by score.
func weightedMetrics(order []int, scores []float64, labels []int, w []int32, threshold float64) (acc, sens, spec, auc float64) {
	var tp, tn, p, n float64
	var negBelow, aucSum float64
	for i := 0; i < len(order); {
		j := i
		var gp, gn float64
		for j < len(order) && scores[order[j]] == scores[order[i]] {
			c := order[j]
			wt := float64(w[c])
			if labels[c] == 1 {
				gp += wt
				if scores[c] >= threshold {
					tp += wt
				}
			} else {
				gn += wt
				if scores[c] < threshold {
					tn += wt
				}
			}
			j++
		}
		aucSum += gp*negBelow + 0.5*gp*gn
		negBelow += gn
		p += gp
		n += gn
		i = j
	}
	return (tp + tn) / (p + n), tp / p, tn / n, aucSum / (p * n)
}

func computeMetrics(scores []float64, labels []int, threshold float64, reps int, seed uint64) Metrics {
	order := make([]int, len(scores))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return scores[order[a]] < scores[order[b]] })
	w := make([]int32, len(scores))
	for i := range w {
		w[i] = 1
	}
	m := Metrics{N: len(scores), BootstrapReps: reps, BootstrapSeed: seed}
	for _, l := range labels {
		m.Positives += l
	}
	a, se, sp, auc := weightedMetrics(order, scores, labels, w, threshold)
	m.Accuracy.Value, m.Sensitivity.Value, m.Specificity.Value, m.AUC.Value = a, se, sp, auc
	r := newRand(seed, 7)
	var bs [4][]float64
	for range reps {
		clear(w)
		for range scores {
			w[r.IntN(len(scores))]++
		}
		a, se, sp, auc := weightedMetrics(order, scores, labels, w, threshold)
		for k, v := range []float64{a, se, sp, auc} {
			if !math.IsNaN(v) { // a resample without one class has no sensitivity/specificity/AUC
				bs[k] = append(bs[k], v)
			}
		}
	}
	for k, iv := range []*Interval{&m.Accuracy, &m.Sensitivity, &m.Specificity, &m.AUC} {
		slices.Sort(bs[k])
		iv.Lo, iv.Hi = quantileSorted(bs[k], 0.025), quantileSorted(bs[k], 0.975)
		if len(bs[k]) == 0 {
			iv.Lo, iv.Hi = iv.Value, iv.Value
		}
	}
	return m
}

// Isotonic is a monotone map from raw score to calibrated probability,
// linear between knots and constant beyond the ends (as scikit-learn's
// IsotonicRegression predicts).
type Isotonic struct {
	X []float64 `json:"x"`
	Y []float64 `json:"y"`
}

// Apply maps a raw score to a calibrated probability.
func (m *Isotonic) Apply(s float64) float64 {
	if m == nil {
		return s
	}
	i := sort.SearchFloat64s(m.X, s)
	switch {
	case i == 0:
		return m.Y[0]
	case i == len(m.X):
		return m.Y[len(m.Y)-1]
	case m.X[i] == s:
		return m.Y[i]
	}
	x0, x1, y0, y1 := m.X[i-1], m.X[i], m.Y[i-1], m.Y[i]
	return y0 + (y1-y0)*(s-x0)/(x1-x0)
}

// fitIsotonic runs pool-adjacent-violators on (score, label).
func fitIsotonic(scores []float64, labels []int) *Isotonic {
	idx := make([]int, len(scores))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return scores[idx[a]] < scores[idx[b]] })
	type block struct{ xlo, xhi, sum, w float64 }
	var bl []block
	for i := 0; i < len(idx); {
		j := i
		var s float64
		for j < len(idx) && scores[idx[j]] == scores[idx[i]] {
			s += float64(labels[idx[j]])
			j++
		}
		x := scores[idx[i]]
		bl = append(bl, block{x, x, s, float64(j - i)})
		for len(bl) > 1 {
			a, b := bl[len(bl)-2], bl[len(bl)-1]
			if a.sum/a.w < b.sum/b.w {
				break
			}
			bl = bl[:len(bl)-2]
			bl = append(bl, block{a.xlo, b.xhi, a.sum + b.sum, a.w + b.w})
		}
		i = j
	}
	m := &Isotonic{}
	for _, b := range bl {
		y := b.sum / b.w
		m.X = append(m.X, b.xlo)
		m.Y = append(m.Y, y)
		if b.xhi > b.xlo {
			m.X = append(m.X, b.xhi)
			m.Y = append(m.Y, y)
		}
	}
	return m
}

// eceBins is the number of equal-width bins of the expected calibration error.
const eceBins = 15

// ece is the expected calibration error of probabilities p against labels.
func ece(p []float64, labels []int) float64 {
	var n, sp, sy [eceBins]float64
	for i, v := range p {
		b := min(max(int(v*eceBins), 0), eceBins-1)
		n[b]++
		sp[b] += v
		sy[b] += float64(labels[i])
	}
	var e float64
	for b := range eceBins {
		if n[b] > 0 {
			e += math.Abs(sp[b]-sy[b]) / float64(len(p))
		}
	}
	return e
}

// crossValidatedECE returns the k-fold cross-validated ECE of the raw scores
// and of isotonic maps fitted on the other folds.
func crossValidatedECE(scores []float64, labels []int, folds int, seed uint64) (raw, iso float64) {
	perm := newRand(seed, 11).Perm(len(scores))
	pred := make([]float64, len(scores))
	for f := range folds {
		var trS []float64
		var trL []int
		var te []int
		for i, j := range perm {
			if i%folds == f {
				te = append(te, j)
			} else {
				trS = append(trS, scores[j])
				trL = append(trL, labels[j])
			}
		}
		m := fitIsotonic(trS, trL)
		for _, j := range te {
			pred[j] = m.Apply(scores[j])
		}
	}
	return ece(scores, labels), ece(pred, labels)
}
