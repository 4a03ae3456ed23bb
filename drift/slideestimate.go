package drift

import "math"

// SlideEstimate is the label-free performance estimate of one slide's
// cells (see Monitor.Performance for the method and its limits): the
// expected accuracy, sensitivity and specificity given the calibrated
// probabilities, each with its standard error. The error is the spread of
// the slide's realised figure around the estimate when every cell is right
// with its calibrated probability, independently: it says how much a slide
// of this size can tell, not how far the calibration can be trusted on it.
// Sensitivity (specificity) is NaN when the slide has no expected
// parasitized (uninfected) cells.
type SlideEstimate struct {
	Cells         int
	Accuracy      float64
	AccuracySE    float64
	Sensitivity   float64
	SensitivitySE float64
	Specificity   float64
	SpecificitySE float64
}

// EstimateSlide estimates a slide's performance from its cells' scores at
// the decision threshold the device applied.
func (b *Baseline) EstimateSlide(scores []float64, threshold float64) SlideEstimate {
	est := SlideEstimate{Cells: len(scores), Accuracy: math.NaN(), AccuracySE: math.NaN(),
		Sensitivity: math.NaN(), SensitivitySE: math.NaN(), Specificity: math.NaN(), SpecificitySE: math.NaN()}
	if len(scores) == 0 {
		return est
	}
	// Expected counts and the variances of the realised counts: a cell
	// predicted positive is a true positive with probability p, one
	// predicted negative a false negative with probability p.
	var tp, fn, tn, fp, vPos, vNeg, vAcc float64
	for _, s := range scores {
		p := b.Calibration.Apply(s)
		v := p * (1 - p)
		if s >= threshold {
			tp += p
			fp += 1 - p
			vPos += v // of the true positives among predicted positives
		} else {
			fn += p
			tn += 1 - p
			vNeg += v // of the false negatives among predicted negatives
		}
		vAcc += v
	}
	n := float64(len(scores))
	est.Accuracy = (tp + tn) / n
	est.AccuracySE = math.Sqrt(vAcc) / n
	// Ratios A / (A + B) of independent sums: delta method,
	// var = (B^2 var A + A^2 var B) / (A + B)^4.
	ratio := func(a, va, b, vb float64) (float64, float64) {
		t := a + b
		if !(t > 0) {
			return math.NaN(), math.NaN()
		}
		return a / t, math.Sqrt(b*b*va+a*a*vb) / (t * t)
	}
	// Sensitivity: true positives (predicted positive) over all expected
	// positives, the false negatives being among the predicted negatives.
	est.Sensitivity, est.SensitivitySE = ratio(tp, vPos, fn, vNeg)
	// Specificity: true negatives over all expected negatives; the true
	// negatives vary with the false negatives, the false positives with the
	// true positives.
	est.Specificity, est.SpecificitySE = ratio(tn, vNeg, fp, vPos)
	return est
}
