package drift

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"testing"
)

func TestMonitorDetectsShiftAndLatches(t *testing.T) {
	b := sharedBaseline(t)
	m, err := NewMonitor(b)
	if err != nil {
		t.Fatal(err)
	}
	s, _, f := synthCells(600, 0.2, 2.5, 21) // a strong shift of logits and embeddings
	var events []Event
	for i := range s {
		ev, err := m.Observe(Observation{Score: s[i], Features: f[i]})
		if err != nil {
			t.Fatal(err)
		}
		events = append(events, ev...)
	}
	alarms := map[string]int{}
	for _, e := range events {
		if e.Level == LevelAlarm {
			alarms[e.Signal]++
		}
		if isSequential(e.Signal) && !(e.Statistic > e.Threshold) {
			t.Errorf("event %+v: statistic not above threshold", e)
		}
	}
	for _, sig := range []string{SignalScores, SignalEmbedding} {
		if alarms[sig] != 1 {
			t.Errorf("%s alarms = %d, want exactly one (latched until Reset); events %+v", sig, alarms[sig], events)
		}
	}
	m.Reset()
	if m.SinceReset() != 0 || m.Index() != 600 {
		t.Fatalf("after reset: since %d, index %d", m.SinceReset(), m.Index())
	}
	var again int
	for i := range 200 {
		ev, _ := m.Observe(Observation{Score: s[i], Features: f[i]})
		for _, e := range ev {
			if e.Level == LevelAlarm && e.Signal == SignalScores {
				again++
			}
		}
	}
	if again != 1 {
		t.Errorf("after Reset the shift alarmed %d times, want once", again)
	}
}

func TestMonitorRejectsBadInput(t *testing.T) {
	m, _ := NewMonitor(sharedBaseline(t))
	_, _, f := synthCells(1, 0.2, 0, 1)
	for _, c := range []struct {
		s float64
		f []float32
	}{{math.NaN(), f[0]}, {-0.1, f[0]}, {1.1, f[0]}, {0.5, nil}, {0.5, f[0][:3]}, {0.5, append(append([]float32{}, f[0][:23]...), float32(math.Inf(1)))}} {
		if _, err := m.Observe(Observation{Score: c.s, Features: c.f}); !errors.Is(err, ErrBadInput) {
			t.Errorf("Observe(%v, %d features) err = %v, want ErrBadInput", c.s, len(c.f), err)
		}
	}
	if m.Index() != 0 {
		t.Fatal("rejected inputs were counted")
	}
}

// TestMonitorStateRoundTrip persists the state mid-stream, restores it into
// a fresh monitor and checks that both produce identical events and
// statistics from there on.
func TestMonitorStateRoundTrip(t *testing.T) {
	b := sharedBaseline(t)
	s, _, f := synthCells(700, 0.2, 0, 31)
	s2, _, f2 := synthCells(300, 0.2, 1.2, 32)
	s, f = append(s, s2...), append(f, f2...)
	for _, cut := range []int{0, 5, 45, 333} {
		a, _ := NewMonitor(b)
		for i := range cut {
			if _, err := a.Observe(Observation{Score: s[i], Features: f[i]}); err != nil {
				t.Fatal(err)
			}
		}
		state, err := a.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		c, _ := NewMonitor(b)
		if err := c.UnmarshalBinary(state); err != nil {
			t.Fatalf("cut %d: %v", cut, err)
		}
		for i := cut; i < len(s); i++ {
			ea, _ := a.Observe(Observation{Score: s[i], Features: f[i]})
			ec, _ := c.Observe(Observation{Score: s[i], Features: f[i]})
			ja, _ := json.Marshal(ea)
			jc, _ := json.Marshal(ec)
			if !bytes.Equal(ja, jc) {
				t.Fatalf("cut %d step %d: events %s vs %s", cut, i, ja, jc)
			}
			for k, st := range a.Status() {
				if d := math.Abs(st.Statistic - c.Status()[k].Statistic); d > 1e-9 && !(math.IsNaN(st.Statistic) && math.IsNaN(c.Status()[k].Statistic)) {
					t.Fatalf("cut %d step %d test %d: statistic %v vs %v", cut, i, k, st.Statistic, c.Status()[k].Statistic)
				}
			}
		}
		if a.Index() != c.Index() {
			t.Fatalf("index %d vs %d", a.Index(), c.Index())
		}
	}
}

func TestMonitorStateRejects(t *testing.T) {
	b := sharedBaseline(t)
	a, _ := NewMonitor(b)
	s, _, f := synthCells(80, 0.2, 0, 3)
	for i := range s {
		a.Observe(Observation{Score: s[i], Features: f[i]})
	}
	good, _ := a.MarshalBinary()
	other := smallBaseline(t, 200, 20, []int{20, 60}, 200, true)
	o, _ := NewMonitor(other)
	if err := o.UnmarshalBinary(good); !errors.Is(err, ErrStateMismatch) {
		t.Fatalf("state of another baseline: err = %v", err)
	}
	var st map[string]any
	json.Unmarshal(good, &st)
	st["scores"] = st["scores"].([]any)[:3]
	bad, _ := json.Marshal(st)
	c, _ := NewMonitor(b)
	if err := c.UnmarshalBinary(bad); err == nil {
		t.Fatal("truncated scores accepted")
	}
	if err := c.UnmarshalBinary([]byte("{")); err == nil {
		t.Fatal("garbage accepted")
	}
}

func FuzzMonitorState(f *testing.F) {
	b := tinyBaseline(f)
	a, _ := NewMonitor(b)
	s, _, feats := synthCells(50, 0.2, 0, 3)
	for i := range feats {
		feats[i] = feats[i][:4]
	}
	for i := range s {
		if _, err := a.Observe(Observation{Score: s[i], Features: feats[i]}); err != nil {
			f.Fatal(err)
		}
	}
	good, _ := a.MarshalBinary()
	f.Add(good)
	f.Fuzz(func(t *testing.T, in []byte) {
		m, _ := NewMonitor(b)
		if err := m.UnmarshalBinary(in); err != nil {
			return
		}
		for i := range s {
			if _, err := m.Observe(Observation{Score: s[i], Features: feats[i]}); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestPerformanceEstimate checks the label-free estimate against the truth
// on a stream whose calibrated probabilities are right by construction, and
// that a prevalence-only change moves sensitivity/specificity little while
// accuracy follows the mix.
func TestPerformanceEstimate(t *testing.T) {
	b := sharedBaseline(t)
	m, _ := NewMonitor(b)
	s, l, f := synthCells(60, 0.2, 0, 41)
	for i := range s {
		m.Observe(Observation{Score: s[i], Features: f[i]})
	}
	est := m.Performance()
	if len(est) != 2 || est[1].N != 60 {
		t.Fatalf("estimates %+v", est)
	}
	var correct float64
	for i := range s {
		if (s[i] >= 0.5) == (l[i] == 1) {
			correct++
		}
	}
	if d := math.Abs(est[1].Accuracy - correct/60); d > 0.1 {
		t.Errorf("estimated accuracy %.3f, observed %.3f", est[1].Accuracy, correct/60)
	}
}

func TestDescribe(t *testing.T) {
	b := sharedBaseline(t)
	same, _, _ := synthCells(60, 0.2, 0, 51)
	shifted, _, _ := synthCells(60, 0.2, 4, 52)
	d0, d1 := b.Describe(same), b.Describe(shifted)
	if d0.Threshold.Window != 60 || d0.Threshold.Sims != 100 {
		t.Fatalf("threshold %+v: want the stored one for window 60", d0.Threshold)
	}
	if len(d1.Above()) < 3 {
		t.Errorf("strong shift: only %v above threshold (%+v)", d1.Above(), d1)
	}
	if len(d0.Above()) > 1 {
		t.Errorf("no shift: %v above threshold (%+v)", d0.Above(), d0)
	}
	// Thresholds depend on the window size: smaller windows, larger noise.
	t25, t60 := b.DescriptiveThresholdFor(25), b.DescriptiveThresholdFor(60)
	if !(t25.KS > t60.KS && t25.PSI > t60.PSI) {
		t.Errorf("window 25 thresholds %+v not above window 60's %+v", t25, t60)
	}
}

func TestPerformanceEstimateAlerts(t *testing.T) {
	b := sharedBaseline(t)
	m, _ := NewMonitor(b)
	_, _, f := synthCells(200, 0.2, 0, 61)
	var got []Event
	for i := range 200 {
		// Unsure cells: the calibrated probability of being right is low.
		ev, err := m.Observe(Observation{Score: 0.45 + 0.1*float64(i%2), Features: f[i]})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ev {
			if e.Signal == SignalEstAccuracy {
				got = append(got, e)
			}
		}
	}
	if len(got) != 1 || got[0].Window != 60 || got[0].Index != 59 || !(got[0].Statistic < got[0].Threshold) {
		t.Fatalf("accuracy-estimate events %+v: want one, on the largest window when it fills (index 59)", got)
	}
}
