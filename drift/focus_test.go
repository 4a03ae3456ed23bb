package drift

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
)

// synthFocus draws one focus value per cell, log-normal like a variance of
// the Laplacian, with a slide-free spread; blur multiplies it down (defocus
// removes fine detail) and a parasitized cell is a little sharper (its
// parasite adds detail), so focus and score are dependent as in real crops.
func synthFocus(labels []int, blur float64, seed uint64) []float64 {
	r := newRand(seed, 41)
	out := make([]float64, len(labels))
	for i, y := range labels {
		out[i] = math.Exp(4+0.25*float64(y)+0.5*normal(r)) * blur
	}
	return out
}

func focusBaseline(t testing.TB, ert, warn int, windows []int, sims int) *Baseline {
	t.Helper()
	s, l, f := synthCells(1500, 0.2, 0, 1)
	b, err := BuildBaseline(context.Background(), s, l, f, 0.5, BaselineConfig{
		Seed: 3, BootstrapReps: 200, DescriptiveSims: 100, MaxReference: 1000, Focus: synthFocus(l, 1, 2),
		Detector: CalibrationConfig{ERT: ert, WarnERT: warn, Windows: windows, Sims: sims},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFocusCalibrated checks that a baseline with focus values calibrates
// the focus signal on every window with its share of the false-alarm
// budget, and that the combined drift-free run length still meets the ERT
// with the fourth signal in it.
func TestFocusCalibrated(t *testing.T) {
	b := focusBaseline(t, 300, 100, []int{20, 60}, 1000)
	var focusTests []int
	for _, ts := range b.Detector.Tests {
		if ts.Signal == SignalFocus {
			focusTests = append(focusTests, ts.Window)
		}
	}
	if !slices.Equal(focusTests, []int{20, 60}) {
		t.Fatalf("focus tests on windows %v, want [20 60]", focusTests)
	}
	if w := b.Detector.Weights; len(w) != 4 || w[SignalFocus] != w[SignalScores] {
		t.Fatalf("weights %v: want four equal shares", w)
	}
	if len(b.Focus) != len(b.Scores) {
		t.Fatalf("%d reference focus values for %d rows", len(b.Focus), len(b.Scores))
	}
	s, l, f := synthCells(30000, 0.2, 0, 77)
	rows := &EvalRows{Scores: s, Labels: l, Features: f, Focus: synthFocus(l, 1, 78)}
	res, err := b.EvalRunLengths(context.Background(), rows, func() Sampler { return &Shuffled{N: len(s)} }, 300, 4000, 5)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("alarm %+v", res.Alarm)
	if res.Alarm.Mean < 225 || res.Alarm.Mean > 375 {
		t.Errorf("mean run length to alarm %.1f, want 300 +- 25%%", res.Alarm.Mean)
	}
	if res.Alarm.BySignal[SignalFocus] == 0 {
		t.Errorf("focus never raised the first false alarm (%v): its share of the budget is unused", res.Alarm.BySignal)
	}
	// Rows without focus cannot feed a detector that uses it.
	rows.Focus = nil
	if _, err := b.EvalRunLengths(context.Background(), rows, func() Sampler { return &Shuffled{N: len(s)} }, 1, 10, 5); err == nil || !strings.Contains(err.Error(), "focus") {
		t.Errorf("rows without focus: err = %v, want one naming focus", err)
	}
}

// TestFocusDetectsBlur shifts only the focus (scores and features keep
// their drift-free distribution, as when the classifier copes with the
// defocus): the focus signal must alarm, and promptly.
func TestFocusDetectsBlur(t *testing.T) {
	b := focusBaseline(t, 2000, 200, []int{20, 60, 200}, 1000)
	s, l, f := synthCells(20000, 0.2, 0, 51)
	null := &EvalRows{Scores: s, Labels: l, Features: f, Focus: synthFocus(l, 1, 52)}
	shifted := &EvalRows{Scores: s, Labels: l, Features: f, Focus: synthFocus(l, 0.7, 53)}
	res, err := b.EvalDelay(context.Background(), null, func() Sampler { return &Shuffled{N: len(s)} }, shifted, func() Sampler { return &Shuffled{N: len(s)} },
		DelayConfig{Runs: 50, Onset: 400, After: 2000, Within: 300, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.Within < 48 || res.BySignal[SignalFocus] < 45 {
		t.Errorf("focus x0.7: %d of 50 runs alarmed within 300 cells, %d first by focus; want >= 48 and >= 45", res.Within, res.BySignal[SignalFocus])
	}
	// The same check on an unshifted stream: no prompt alarm beyond the
	// false-alarm rate.
	res, err = b.EvalDelay(context.Background(), null, func() Sampler { return &Shuffled{N: len(s)} }, null, func() Sampler { return &Shuffled{N: len(s)} },
		DelayConfig{Runs: 50, Onset: 400, After: 300, Within: 300, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	if res.Within > 10 {
		t.Errorf("no shift: %d of 50 runs alarmed within 300 cells at ERT 2000", res.Within)
	}
}

// TestBaselineWithoutFocus checks that a baseline made without focus
// values (as every baseline before the focus signal) has no "focus" key,
// loads, and runs without the signal, ignoring whatever focus the caller
// passes; and that a focus test without a focus reference is refused.
func TestBaselineWithoutFocus(t *testing.T) {
	b := sharedBaseline(t)
	j, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(j, []byte(`"focus"`)) {
		t.Fatal(`baseline without focus values has a "focus" key`)
	}
	loaded, err := DecodeBaselineBytes(j)
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMonitor(loaded)
	if err != nil {
		t.Fatal(err)
	}
	if m.UsesFocus() {
		t.Fatal("monitor of a baseline without focus uses focus")
	}
	s, _, f := synthCells(50, 0.2, 0, 5)
	for i := range s {
		if _, err := m.Observe(Observation{Score: s[i], Features: f[i], Focus: math.NaN()}); err != nil {
			t.Fatalf("focus ignored without a focus reference, yet: %v", err)
		}
	}
	for _, ts := range m.Status() {
		if ts.Signal == SignalFocus {
			t.Fatal("focus test without a focus reference")
		}
	}
	var raw map[string]any
	json.Unmarshal(j, &raw)
	det := raw["detector"].(map[string]any)
	det["tests"] = append(det["tests"].([]any)[:len(det["tests"].([]any))-1], map[string]any{"signal": SignalFocus, "window": 50})
	bad, _ := json.Marshal(raw)
	if _, err := DecodeBaselineBytes(bad); !errors.Is(err, ErrInvalidBaseline) || !strings.Contains(err.Error(), "focus") {
		t.Fatalf("focus test without a focus reference: err = %v", err)
	}
	if _, err := loaded.Recalibrate(context.Background(), CalibrationConfig{ERT: 300, Windows: []int{20}, Sims: 100, Signals: map[string]float64{SignalFocus: 1}}); err == nil {
		t.Fatal("recalibrating a focus signal without a focus reference succeeded")
	}
}

// TestFocusInputs checks Observe's and Load's refusals of bad focus values
// and the monitor state's round trip with focus.
func TestFocusInputs(t *testing.T) {
	b := focusBaseline(t, 300, 100, []int{20, 60}, 200)
	m, _ := NewMonitor(b)
	if !m.UsesFocus() {
		t.Fatal("monitor of a baseline with focus does not use it")
	}
	s, l, f := synthCells(400, 0.2, 0, 61)
	foc := synthFocus(l, 0.8, 62)
	for _, v := range []float64{math.NaN(), -1, math.Inf(1)} {
		if _, err := m.Observe(Observation{Score: 0.5, Features: f[0], Focus: v}); !errors.Is(err, ErrBadInput) {
			t.Errorf("focus %v: err = %v, want ErrBadInput", v, err)
		}
	}
	for i := range 250 {
		if _, err := m.Observe(Observation{Score: s[i], Features: f[i], Focus: foc[i]}); err != nil {
			t.Fatal(err)
		}
	}
	state, _ := m.MarshalBinary()
	c, _ := NewMonitor(b)
	if err := c.UnmarshalBinary(state); err != nil {
		t.Fatal(err)
	}
	for i := 250; i < len(s); i++ {
		o := Observation{Score: s[i], Features: f[i], Focus: foc[i]}
		ea, _ := m.Observe(o)
		ec, _ := c.Observe(o)
		if len(ea) != len(ec) {
			t.Fatalf("step %d: %d events vs %d after restore", i, len(ea), len(ec))
		}
	}
	for k, st := range m.Status() {
		if st.Signal == SignalFocus && math.Abs(st.Statistic-c.Status()[k].Statistic) > 1e-9 {
			t.Fatalf("focus window %d: statistic %v vs %v after restore", st.Window, st.Statistic, c.Status()[k].Statistic)
		}
	}
	// A state without focus values does not restore into a focus monitor.
	var raw map[string]any
	json.Unmarshal(state, &raw)
	delete(raw, "focus")
	noFocus, _ := json.Marshal(raw)
	if err := c.UnmarshalBinary(noFocus); err == nil {
		t.Fatal("state without focus restored into a monitor that uses focus")
	}

	j, _ := json.Marshal(b)
	for _, edit := range []func(map[string]any){
		func(r map[string]any) { r["focus"] = r["focus"].([]any)[1:] },
		func(r map[string]any) { r["focus"].([]any)[3] = -2.5 },
	} {
		var r map[string]any
		json.Unmarshal(j, &r)
		edit(r)
		p, _ := json.Marshal(r)
		if _, err := DecodeBaselineBytes(p); !errors.Is(err, ErrInvalidBaseline) {
			t.Errorf("edited focus: err = %v, want ErrInvalidBaseline", err)
		}
	}
	sc, lb, _ := synthCells(100, 0.3, 0, 1)
	for _, foc := range [][]float64{make([]float64, 99), slices.Repeat([]float64{math.NaN()}, 100)} {
		if _, err := BuildBaseline(context.Background(), sc, lb, nil, 0.5, BaselineConfig{Focus: foc, Detector: CalibrationConfig{ERT: 50, Windows: []int{5}, Sims: 100}}); !errors.Is(err, ErrInvalidBaseline) {
			t.Errorf("bad focus input (%d values): err = %v", len(foc), err)
		}
	}
}
