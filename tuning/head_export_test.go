package tuning

import (
	"context"
	"errors"
	"math"
	"testing"
)

// TestTrainHeadReproducesTrial: the head TrainHead returns is the one a
// trial of HeadObjectiveOn with the same parameters and seed trained, so
// the retune worker can export the winner without having kept every
// trial's weights.
func TestTrainHeadReproducesTrial(t *testing.T) {
	f := gaussianFeatures(600, 8, 6, 2, 3)
	train, val := SplitBySlide(f, 0.3, 1)
	obj, err := HeadObjectiveOn(f, train, val, "val_loss")
	if err != nil {
		t.Fatal(err)
	}
	params := Params{HeadLR: 0.01, HeadBatchSize: 32, HeadHidden: 16}
	o, err := obj(context.Background(), TrialInput{Trial: 1, Seed: 42, Params: params, MaxEpochs: 12}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseHeadParams(params)
	if err != nil {
		t.Fatal(err)
	}
	w, o2, err := TrainHead(context.Background(), f, train, val, cfg, 42, 12, "val_loss")
	if err != nil {
		t.Fatal(err)
	}
	if o.Value != o2.Value || len(o.Epochs) != len(o2.Epochs) {
		t.Fatalf("TrainHead value %v after %d epochs, trial %v after %d", o2.Value, len(o2.Epochs), o.Value, len(o.Epochs))
	}
	if w.In != 8 || w.Hidden != 16 || w.Classes != 2 || len(w.W1) != 16*8 || len(w.B1) != 16 || len(w.W2) != 2*16 || len(w.B2) != 2 {
		t.Fatalf("weights shaped in=%d hidden=%d classes=%d, %d/%d/%d/%d values", w.In, w.Hidden, w.Classes, len(w.W1), len(w.B1), len(w.W2), len(w.B2))
	}
	// The exported weights are the kept epoch's: their validation loss is
	// the trial's value (to float32 rounding of the weights).
	var loss float64
	p := make([]float64, 2)
	for _, i := range val {
		w.Probabilities(f.Row(i), p)
		if math.Abs(p[0]+p[1]-1) > 1e-12 {
			t.Fatalf("probabilities %v do not sum to 1", p)
		}
		loss -= math.Log(p[f.Label[i]])
	}
	loss /= float64(len(val))
	if math.Abs(loss-o.Value) > 1e-4 {
		t.Fatalf("validation loss of the exported head %.6f, trial's value %.6f", loss, o.Value)
	}
}

func TestHeadSplitRefused(t *testing.T) {
	f := gaussianFeatures(100, 4, 4, 2, 1)
	cfg := DefaultHeadConfig()
	cfg.BatchSize = 16
	for _, c := range []struct {
		name       string
		train, val []int
	}{
		{"overlap", []int{0, 1, 2}, []int{2, 3}},
		{"out of range", []int{0, 1}, []int{100}},
		{"negative", []int{-1}, []int{5}},
		{"empty validation", []int{0, 1}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			if _, err := HeadObjectiveOn(f, c.train, c.val, "val_loss"); !errors.Is(err, ErrBadFeatures) {
				t.Fatalf("HeadObjectiveOn: %v, want ErrBadFeatures", err)
			}
			if _, _, err := TrainHead(context.Background(), f, c.train, c.val, cfg, 1, 2, "val_loss"); !errors.Is(err, ErrBadFeatures) {
				t.Fatalf("TrainHead: %v, want ErrBadFeatures", err)
			}
		})
	}
}

// TestHeadObjectiveOnReadsOnlyItsRows: rows outside train and val (the
// retune worker's sealed test) cannot change a trial: changing their values and
// labels leaves the outcome identical.
func TestHeadObjectiveOnReadsOnlyItsRows(t *testing.T) {
	f := gaussianFeatures(300, 6, 6, 2, 5)
	var train, val []int
	for i := range f.N() {
		switch f.Slide[i] {
		case "slide-000", "slide-001":
			val = append(val, i)
		case "slide-002":
			// held out
		default:
			train = append(train, i)
		}
	}
	run := func(f *Features) Outcome {
		obj, err := HeadObjectiveOn(f, train, val, "val_loss")
		if err != nil {
			t.Fatal(err)
		}
		o, err := obj(context.Background(), TrialInput{Trial: 1, Seed: 7, Params: Params{HeadBatchSize: 32}, MaxEpochs: 5}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	clean := run(f)
	g := *f
	g.X = append([]float32(nil), f.X...)
	g.Label = append([]int(nil), f.Label...)
	for i := range g.N() {
		if g.Slide[i] == "slide-002" {
			for j := range g.Dim {
				g.X[i*g.Dim+j] = 1e6
			}
			g.Label[i] = 1 - g.Label[i]
		}
	}
	if poisoned := run(&g); poisoned.Value != clean.Value || poisoned.State != StateComplete {
		t.Fatalf("held-out rows changed the trial: %v (%s) vs %v", poisoned.Value, poisoned.State, clean.Value)
	}
}
