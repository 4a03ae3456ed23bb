package drift

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestEstimateSlide: on slides whose scores are calibrated probabilities
// (identity calibration), the estimate is unbiased for the realised
// accuracy and sensitivity, and its standard error matches their spread
// over many slides drawn alike.
func TestEstimateSlide(t *testing.T) {
	b := &Baseline{} // no calibration map: scores are the probabilities
	r := rand.New(rand.NewPCG(3, 4))
	const slides, cells = 2000, 300
	var accErr, accZ2, sensErr, sensZ2 float64
	var nSens int
	for range slides {
		scores := make([]float64, cells)
		var correct, tp, pos int
		for i := range scores {
			// A confident classifier with some unsure cells.
			p := 1 / (1 + math.Exp(-(r.NormFloat64()*3 - 2.5)))
			scores[i] = p
			y := r.Float64() < p
			pred := p >= 0.5
			if y == pred {
				correct++
			}
			if y {
				pos++
				if pred {
					tp++
				}
			}
		}
		est := b.EstimateSlide(scores, 0.5)
		acc := float64(correct) / cells
		accErr += est.Accuracy - acc
		accZ2 += math.Pow((est.Accuracy-acc)/est.AccuracySE, 2)
		if pos > 0 && !math.IsNaN(est.Sensitivity) {
			sens := float64(tp) / float64(pos)
			sensErr += est.Sensitivity - sens
			sensZ2 += math.Pow((est.Sensitivity-sens)/est.SensitivitySE, 2)
			nSens++
		}
	}
	t.Logf("accuracy: bias %.4f, mean z^2 %.3f; sensitivity: bias %.4f, mean z^2 %.3f", accErr/slides, accZ2/slides, sensErr/float64(nSens), sensZ2/float64(nSens))
	if math.Abs(accErr/slides) > 0.002 || math.Abs(sensErr/float64(nSens)) > 0.01 {
		t.Errorf("biased estimate: accuracy %.4f, sensitivity %.4f", accErr/slides, sensErr/float64(nSens))
	}
	// A right standard error gives a mean squared z of 1.
	for name, z2 := range map[string]float64{"accuracy": accZ2 / slides, "sensitivity": sensZ2 / float64(nSens)} {
		if z2 < 0.8 || z2 > 1.25 {
			t.Errorf("%s: mean squared z %.3f, want 1 (standard error off)", name, z2)
		}
	}
	if e := b.EstimateSlide(nil, 0.5); e.Cells != 0 || !math.IsNaN(e.Accuracy) {
		t.Errorf("no cells: %+v, want NaN", e)
	}
}
