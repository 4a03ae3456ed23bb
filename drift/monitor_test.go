package drift

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"testing"
)

// TestMonitorEpisodes: a strong shift starts one alarm episode per
// signal while it lasts (no repeats while in alarm), the end of the shift
// ends the episode a window later, and a second shift starts a new one
// without any Reset: alarms are events with a start and an end, not a
// latch that hides the next.
func TestMonitorEpisodes(t *testing.T) {
	b := sharedBaseline(t)
	m, err := NewMonitor(b)
	if err != nil {
		t.Fatal(err)
	}
	shifted, _, fs := synthCells(600, 0.2, 2.5, 21) // a strong shift of logits and embeddings
	calm, _, fc := synthCells(3000, 0.2, 0, 22)
	var events []Event
	feed := func(s []float64, f [][]float32) {
		for i := range s {
			ev, err := m.Observe(Observation{Score: s[i], Features: f[i]})
			if err != nil {
				t.Fatal(err)
			}
			events = append(events, ev...)
		}
	}
	count := func(sig, phase string) int {
		n := 0
		for _, e := range events {
			if e.Level == LevelAlarm && e.Signal == sig && e.Phase == phase {
				n++
			}
		}
		return n
	}
	feed(shifted, fs)
	for _, e := range events {
		if e.Phase == PhaseStart && isSequential(e.Signal) && !(e.Statistic > e.Threshold) {
			t.Errorf("event %+v: statistic not above threshold", e)
		}
	}
	for _, sig := range []string{SignalScores, SignalEmbedding} {
		if count(sig, PhaseStart) != 1 || count(sig, PhaseEnd) != 0 {
			t.Errorf("%s during the shift: %d starts, %d ends, want one start; events %+v", sig, count(sig, PhaseStart), count(sig, PhaseEnd), events)
		}
	}
	// Calm cells until both signals' episodes have ended (the small test
	// baseline's ERT is 300 cells, so false alarms may start and end
	// others meanwhile).
	open := func(sig string) bool {
		o := false
		for _, e := range events {
			if e.Level == LevelAlarm && e.Signal == sig {
				o = e.Phase == PhaseStart
			}
		}
		return o
	}
	firstEnd := map[string]int64{}
	for i := 0; i < len(calm) && (len(firstEnd) < 2 || open(SignalScores) || open(SignalEmbedding)); i++ {
		feed(calm[i:i+1], fc[i:i+1])
		for _, e := range events {
			if _, seen := firstEnd[e.Signal]; !seen && e.Level == LevelAlarm && e.Phase == PhaseEnd && (e.Signal == SignalScores || e.Signal == SignalEmbedding) {
				firstEnd[e.Signal] = e.Index
			}
		}
	}
	for _, sig := range []string{SignalScores, SignalEmbedding} {
		end, ok := firstEnd[sig]
		if !ok || open(sig) {
			t.Fatalf("%s: no end within %d calm cells (ended %v, open %v)", sig, len(calm), ok, open(sig))
		}
		// Calm is counted from the first cell whose window statistic
		// is back under the warn threshold; that takes part of a window
		// after the shift stops, and the episode ends a window after.
		if end < 600+int64(m.calmNeed[sig])-1 || end > 600+4*int64(m.calmNeed[sig]) {
			t.Errorf("%s episode ended at cell %d; the shift stopped at 600, a window is %d cells", sig, end, m.calmNeed[sig])
		}
	}
	for _, e := range events {
		if e.Phase == PhaseEnd && !(e.Since < e.Index) {
			t.Errorf("end %+v: since does not precede the end", e)
		}
	}
	starts := map[string]int{SignalScores: count(SignalScores, PhaseStart), SignalEmbedding: count(SignalEmbedding, PhaseStart)}
	feed(shifted[:200], fs[:200])
	for sig, before := range starts {
		if count(sig, PhaseStart) != before+1 {
			t.Errorf("%s: the second shift started %d new episodes in 200 cells, want 1", sig, count(sig, PhaseStart)-before)
		}
	}
	m.Reset()
	if m.SinceReset() != 0 {
		t.Fatalf("after reset: since %d", m.SinceReset())
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
