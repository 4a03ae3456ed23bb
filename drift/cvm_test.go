package drift

import (
	"math"
	"testing"
)

// TestOnlineCvMMatchesBatch slides a window over a stream with heavy ties
// (values on a coarse grid, many at exactly 0 and 1, some absent from the
// reference) and compares the incremental statistic with the batch one at
// every step.
func TestOnlineCvMMatchesBatch(t *testing.T) {
	r := newRand(1, 2)
	draw := func(shift float64) float64 {
		u := r.Float64()
		switch {
		case u < 0.3:
			return 0
		case u < 0.4:
			return 1
		default:
			return math.Round((r.Float64()*0.8+shift)*40) / 40
		}
	}
	ref := make([]float64, 300)
	for i := range ref {
		ref[i] = draw(0)
	}
	cr := newCvMRef(ref)
	for _, size := range []int{1, 7, 60} {
		w := newCvMWindow(cr)
		var stream []float64
		for i := range 400 {
			x := draw(0.15)
			if i%17 == 0 {
				x = 0.0125 + float64(i%3)*0.5 // values between reference atoms, repeated
			}
			stream = append(stream, x)
			c, tr := cr.locate(x)
			w.update(x, c, tr, 1)
			if len(stream) > size {
				old := stream[len(stream)-size-1]
				c, tr := cr.locate(old)
				w.update(old, c, tr, -1)
			}
			lo := max(0, len(stream)-size)
			want := CramerVonMises2Samp(ref, stream[lo:])
			if got := w.stat(); math.Abs(got-want) > 1e-9*max(1, want) {
				t.Fatalf("size %d step %d: online %.12g, batch %.12g", size, i, got, want)
			}
		}
	}
}

func TestOnlineCvMAgainstScipyVectors(t *testing.T) {
	for _, c := range loadVectors(t) {
		cr := newCvMRef(c.X)
		w := newCvMWindow(cr)
		for _, y := range c.Y {
			cell, tr := cr.locate(y)
			w.update(y, cell, tr, 1)
		}
		if got := w.stat(); !closeTo(got, c.CvM) {
			t.Errorf("%s: online %.15g, scipy %.15g", c.Name, got, c.CvM)
		}
	}
}
