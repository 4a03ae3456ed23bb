package tuning

import (
	"math"
	"math/rand/v2"
	"slices"
	"sort"
)

// ChooseThreshold picks a decision threshold on validation scores the way
// the recipe chooses the bundle's counting operating point: the one with
// the fewest misclassified cells (false positives plus false negatives);
// among equally good thresholds, the one nearest 0.5. p are the positive
// class's probabilities, y 1 for positive; a cell is called positive when
// p >= threshold.
//
// prevalence, when in (0, 1), counts the errors as if the cells had that
// share of positives (each class's errors weighted by its share in the
// stream over its share in p): a validation split of balanced crops then
// chooses the threshold a stream of field cells with a few percent
// parasitized needs, where the negatives' upper tail decides the count.
// Otherwise the scores' own prevalence is used.
func ChooseThreshold(p []float64, y []int, prevalence float64) float64 {
	var npos int
	for _, v := range y {
		npos += v
	}
	wPos, wNeg := 1.0, 1.0
	if prevalence > 0 && prevalence < 1 && npos > 0 && npos < len(y) {
		wPos = prevalence / (float64(npos) / float64(len(y)))
		wNeg = (1 - prevalence) / (1 - float64(npos)/float64(len(y)))
	}
	s := slices.Clone(p)
	slices.Sort(s)
	s = slices.Compact(s)
	// A threshold between two adjacent scores behaves like any other in
	// that gap; midpoints stand for all of them.
	cands := []float64{0}
	for i := 1; i < len(s); i++ {
		cands = append(cands, (s[i-1]+s[i])/2)
	}
	cands = append(cands, 1)
	order := make([]int, len(p))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return p[order[a]] < p[order[b]] })
	posBelow := make([]int, len(p)+1) // positives among the k lowest
	negBelow := make([]int, len(p)+1)
	for k, i := range order {
		posBelow[k+1], negBelow[k+1] = posBelow[k], negBelow[k]
		if y[i] == 1 {
			posBelow[k+1]++
		} else {
			negBelow[k+1]++
		}
	}
	best, bestErr := 0.5, math.Inf(1)
	const tie = 1e-9 // weighted sums of equal counts may differ in the last bits
	for _, t := range cands {
		k := sort.Search(len(order), func(j int) bool { return p[order[j]] >= t })
		errs := wPos*float64(posBelow[k]) + wNeg*float64(negBelow[len(p)]-negBelow[k])
		if errs < bestErr-tie || (math.Abs(errs-bestErr) <= tie && math.Abs(t-0.5) < math.Abs(best-0.5)) {
			best, bestErr = t, errs
		}
	}
	return best
}

// Estimate is a point estimate with a 95% bootstrap percentile interval.
type Estimate struct {
	Value float64 `json:"value"`
	Lo    float64 `json:"lo"`
	Hi    float64 `json:"hi"`
}

// BinaryMetrics are one model's figures on a test set at its threshold.
type BinaryMetrics struct {
	N           int      `json:"n"`
	Positives   int      `json:"positives"`
	Slides      int      `json:"slides"`
	Threshold   float64  `json:"threshold"`
	Accuracy    Estimate `json:"accuracy"`
	Sensitivity Estimate `json:"sensitivity"`
	Specificity Estimate `json:"specificity"`
	AUC         Estimate `json:"auc"`
}

// Comparison is a new model against the incumbent on the same test rows,
// with paired differences (new minus incumbent).
type Comparison struct {
	New             BinaryMetrics `json:"new"`
	Incumbent       BinaryMetrics `json:"incumbent"`
	AccuracyDiff    Estimate      `json:"accuracy_diff"`
	SensitivityDiff Estimate      `json:"sensitivity_diff"`
	SpecificityDiff Estimate      `json:"specificity_diff"`
	BootstrapReps   int           `json:"bootstrap_reps"`
	BootstrapSeed   uint64        `json:"bootstrap_seed"`
}

// Compare measures two models' scores on the same cells. The intervals
// come from a bootstrap over slides, not cells: cells of one slide share
// its stain and its patient, so resampling cells would pretend to more
// independent evidence than the test set holds. Both models are scored on
// each resample, so the differences are paired.
func Compare(pNew, pOld []float64, y []int, slides []string, tNew, tOld float64, reps int, seed uint64) Comparison {
	ids := map[string]int{}
	group := make([]int, len(y))
	for i, s := range slides {
		g, ok := ids[s]
		if !ok {
			g = len(ids)
			ids[s] = g
		}
		group[i] = g
	}
	members := make([][]int, len(ids))
	for i, g := range group {
		members[g] = append(members[g], i)
	}
	w := make([]float64, len(y))
	for i := range w {
		w[i] = 1
	}
	c := Comparison{BootstrapReps: reps, BootstrapSeed: seed}
	newAt := metricsAt(pNew, y, w, tNew)
	oldAt := metricsAt(pOld, y, w, tOld)
	var pos int
	for _, v := range y {
		pos += v
	}
	c.New = BinaryMetrics{N: len(y), Positives: pos, Slides: len(ids), Threshold: tNew}
	c.Incumbent = BinaryMetrics{N: len(y), Positives: pos, Slides: len(ids), Threshold: tOld}
	var samples [11][]float64
	rng := rand.New(rand.NewPCG(seed, 0x626f6f74)) // "boot"
	for range reps {
		clear(w)
		for range members {
			for _, i := range members[rng.IntN(len(members))] {
				w[i]++
			}
		}
		a, b := metricsAt(pNew, y, w, tNew), metricsAt(pOld, y, w, tOld)
		vals := [11]float64{a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], a[0] - b[0], a[1] - b[1], a[2] - b[2]}
		for k, v := range vals {
			if !math.IsNaN(v) { // a resample without one class has no sensitivity, specificity or AUC
				samples[k] = append(samples[k], v)
			}
		}
	}
	point := [11]float64{newAt[0], newAt[1], newAt[2], newAt[3], oldAt[0], oldAt[1], oldAt[2], oldAt[3],
		newAt[0] - oldAt[0], newAt[1] - oldAt[1], newAt[2] - oldAt[2]}
	dst := [11]*Estimate{&c.New.Accuracy, &c.New.Sensitivity, &c.New.Specificity, &c.New.AUC,
		&c.Incumbent.Accuracy, &c.Incumbent.Sensitivity, &c.Incumbent.Specificity, &c.Incumbent.AUC,
		&c.AccuracyDiff, &c.SensitivityDiff, &c.SpecificityDiff}
	for k, e := range dst {
		*e = percentileInterval(point[k], samples[k])
	}
	return c
}

func percentileInterval(v float64, xs []float64) Estimate {
	if len(xs) == 0 {
		return Estimate{v, v, v}
	}
	slices.Sort(xs)
	q := func(f float64) float64 {
		pos := f * float64(len(xs)-1)
		lo := int(math.Floor(pos))
		hi := min(lo+1, len(xs)-1)
		return xs[lo] + (pos-float64(lo))*(xs[hi]-xs[lo])
	}
	return Estimate{Value: v, Lo: q(0.025), Hi: q(0.975)}
}

// metricsAt is accuracy, sensitivity, specificity and AUC with case
// weights w.
func metricsAt(p []float64, y []int, w []float64, t float64) [4]float64 {
	var tp, tn, P, N float64
	for i, v := range p {
		if y[i] == 1 {
			P += w[i]
			if v >= t {
				tp += w[i]
			}
		} else {
			N += w[i]
			if v < t {
				tn += w[i]
			}
		}
	}
	return [4]float64{(tp + tn) / (P + N), tp / P, tn / N, weightedAUC(p, y, w)}
}

// weightedAUC is the probability that a positive outscores a negative
// (ties count half), with case weights.
func weightedAUC(p []float64, y []int, w []float64) float64 {
	order := make([]int, len(p))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return p[order[a]] < p[order[b]] })
	var negBelow, sum, P, N float64
	for i := 0; i < len(order); {
		j := i
		var gp, gn float64
		for ; j < len(order) && p[order[j]] == p[order[i]]; j++ {
			if y[order[j]] == 1 {
				gp += w[order[j]]
			} else {
				gn += w[order[j]]
			}
		}
		sum += gp*negBelow + 0.5*gp*gn
		negBelow += gn
		P += gp
		N += gn
		i = j
	}
	return sum / (P * N)
}

// ROC returns the ROC curve's points (false-positive rate, true-positive
// rate), from (0,0) to (1,1), one per distinct score.
func ROC(p []float64, y []int) (fpr, tpr []float64) {
	order := make([]int, len(p))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return p[order[a]] > p[order[b]] })
	var P, N float64
	for _, v := range y {
		if v == 1 {
			P++
		} else {
			N++
		}
	}
	fpr, tpr = []float64{0}, []float64{0}
	var tp, fp float64
	for i := 0; i < len(order); {
		j := i
		for ; j < len(order) && p[order[j]] == p[order[i]]; j++ {
			if y[order[j]] == 1 {
				tp++
			} else {
				fp++
			}
		}
		fpr, tpr = append(fpr, fp/N), append(tpr, tp/P)
		i = j
	}
	return fpr, tpr
}
