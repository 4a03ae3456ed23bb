package drift

import (
	"context"
	"testing"
)

// TestRunLengthMatchesERT calibrates a small detector (ERT 300, warn 100,
// windows 20 and 60) and checks the mean drift-free run length on new cells
// from the same generator. 300 runs give a standard error of about 6%; the
// bound is +-25%. (No test runs before a window holds 10 scores, so very
// small ERTs cannot be met; at ERT 5000 those steps do not matter.)
func TestRunLengthMatchesERT(t *testing.T) {
	b := smallBaseline(t, 300, 100, []int{20, 60}, 1000, true)
	s, l, f := synthCells(30000, 0.2, 0, 77)
	rows := &EvalRows{Scores: s, Labels: l, Features: f}
	res, err := b.EvalRunLengths(context.Background(), rows, func() Sampler { return &Shuffled{N: len(s)} }, 300, 4000, 5)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("alarm %+v", res.Alarm)
	t.Logf("warn  %+v", res.Warn)
	if res.Alarm.Mean < 225 || res.Alarm.Mean > 375 {
		t.Errorf("mean run length to alarm %.1f, want 300 +- 25%%", res.Alarm.Mean)
	}
	if res.Warn.Mean < 75 || res.Warn.Mean > 125 {
		t.Errorf("mean run length to warn %.1f, want 100 +- 25%%", res.Warn.Mean)
	}
}

// TestBootstrapNullMatchesResampling: with the bootstrap null model, streams
// that resample the baseline's own reference rows run for the ERT on average.
func TestBootstrapNullMatchesResampling(t *testing.T) {
	s, l, f := synthCells(1500, 0.2, 0, 1)
	b, err := BuildBaseline(context.Background(), s, l, f, 0.5, BaselineConfig{
		Seed: 4, BootstrapReps: 50, DescriptiveSims: 20, MaxReference: 1000,
		Detector: CalibrationConfig{ERT: 300, WarnERT: 100, Windows: []int{20, 60}, Sims: 1000, Null: NullBootstrap},
	})
	if err != nil {
		t.Fatal(err)
	}
	rows := b.ReferenceRows()
	res, err := b.EvalRunLengths(context.Background(), rows, func() Sampler { return Resample{N: len(rows.Scores)} }, 300, 4000, 6)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("alarm %+v", res.Alarm)
	if res.Alarm.Mean < 225 || res.Alarm.Mean > 375 {
		t.Errorf("mean run length to alarm %.1f, want 300 +- 25%%", res.Alarm.Mean)
	}
}
