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
