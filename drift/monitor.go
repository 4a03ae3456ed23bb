package drift

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
)

// Event levels.
const (
	LevelWarn  = "warn"
	LevelAlarm = "alarm"
)

// Signals of the label-free performance estimate. They alert (level warn,
// once per Reset) when the estimate on the full largest window falls below
// both the baseline's lower 95% bound and the 1st percentile of simulated
// drift-free windows of that size; they are not calibrated to an ERT.
const (
	SignalEstAccuracy    = "estimated_accuracy"
	SignalEstSensitivity = "estimated_sensitivity"
	SignalEstSpecificity = "estimated_specificity"
)

var estimateSignals = [3]string{SignalEstAccuracy, SignalEstSensitivity, SignalEstSpecificity}

// ErrBadInput is wrapped by Observe for scores or features it cannot use.
var ErrBadInput = errors.New("bad drift input")

// Event is the start or the end of an episode: a signal crossing a tier's
// threshold (Phase start), or a signal in an episode that has stayed calm
// for a whole window (Phase end: every test of the signal at or below its
// warn threshold for the signal's largest window, or an estimate back at
// or above its floor for the largest window), after which a new crossing
// is a new episode. Alarms are not latched: an operator who did not
// acknowledge one still sees the next.
type Event struct {
	Index     int64   `json:"index"` // 0-based position of the triggering score in the stream
	Signal    string  `json:"signal"`
	Level     string  `json:"level"`
	Phase     string  `json:"phase"` // PhaseStart or PhaseEnd
	Statistic float64 `json:"statistic"`
	Threshold float64 `json:"threshold"`
	Window    int     `json:"window"`
	// Since is, for an end, the index of the cell that started the
	// episode.
	Since int64 `json:"since,omitempty"`
}

// Event phases.
const (
	PhaseStart = "start"
	PhaseEnd   = "end"
)

// Monitor runs the calibrated detectors and the performance estimate over a
// live stream. It is not safe for concurrent use; the owner serialises
// Observe, Reset and the (un)marshalling.
type Monitor struct {
	b     *Baseline
	cal   *Calibration
	e     *engine
	total int64 // scores observed since construction
	block int
	fired [2]map[string]bool // per tier (0 warn, 1 alarm): signals in an episode
	// startedAt and calm, per tier and signal in an episode: the index of
	// the cell that started it, and how many cells in a row since have
	// kept every test of the signal at or below its warn threshold.
	startedAt [2]map[string]int64
	calm      [2]map[string]int
	// calmNeed is, per signal, the cells of calm that end an episode: its
	// largest window, so that the signal's whole history is after the
	// shift ended.
	calmNeed  map[string]int
	perfCalm  [][3]int   // per window: cells with the estimate back at or above its floor
	perfSince [][3]int64 // per window: the cell that started the estimate's episode

	// Performance estimate: calibrated probabilities of the largest window
	// and, per window, the expected TP, FP, TN, FN.
	probs   []float64
	perf    [][4]float64
	perfLow [][3]bool // per window: accuracy, sensitivity, specificity estimate alerted since reset
	z       []float32 // ring of projected features, for persistence
	zbuf    []float32 // scratch for one projection
	tmp     []float64
	// estimateFloor: the estimate alerts below the lower of the baseline's
	// 95% bound and the 1st percentile of drift-free windows of this size
	// (without the latter a window's own noise would alert on drift-free
	// data).
	estimateFloor [3]float64
	phi           []float64
}

// NewMonitor returns a monitor against b with b's detector calibration.
func NewMonitor(b *Baseline) (*Monitor, error) {
	if b == nil || b.Detector == nil || b.ref == nil {
		return nil, fmt.Errorf("%w: baseline not built or loaded through this package", ErrInvalidBaseline)
	}
	m := &Monitor{b: b, cal: b.Detector, e: newEngine(b.ref, b.Detector.Tests, b.Detector.Seed)}
	m.probs = make([]float64, m.e.maxW)
	m.perf = make([][4]float64, len(m.e.windows))
	mt := b.Metrics
	m.estimateFloor = [3]float64{mt.Accuracy.Lo, mt.Sensitivity.Lo, mt.Specificity.Lo}
	for _, d := range b.Descriptive {
		if d.Window == m.e.maxW {
			m.estimateFloor = [3]float64{min(mt.Accuracy.Lo, d.AccuracyLow), min(mt.Sensitivity.Lo, d.SensitivityLow), min(mt.Specificity.Lo, d.SpecificityLow)}
		}
	}
	if m.e.useMMD {
		m.z = make([]float32, m.e.maxW*b.Embedding.Dim)
		m.phi = make([]float64, b.Embedding.RFFDim)
		m.zbuf = make([]float32, b.Embedding.Dim)
		m.tmp = make([]float64, b.Embedding.Dim)
	}
	m.calmNeed = map[string]int{}
	for _, ts := range m.cal.Tests {
		m.calmNeed[ts.Signal] = max(m.calmNeed[ts.Signal], ts.Window)
	}
	m.Reset()
	return m, nil
}

// UsesFeatures reports whether Observe needs features.
func (m *Monitor) UsesFeatures() bool { return m.e.useMMD }

// UsesFocus reports whether Observe needs a focus value (the baseline has a
// focus reference and its calibration includes the focus signal).
func (m *Monitor) UsesFocus() bool { return m.e.useFoc }

// Reset starts detection afresh (after an acknowledged alarm or a new model):
// windows are emptied and thresholds start again from the first block.
func (m *Monitor) Reset() {
	m.e.reset()
	m.block = 0
	m.fired = [2]map[string]bool{{}, {}}
	m.clearEpisodes()
	m.perfLow = make([][3]bool, len(m.e.windows))
	clear(m.perf)
}

// clearEpisodes forgets the calm counters (and start positions): after a
// Reset, or a restore, which does not persist them; an episode then ends
// a whole window later than it would have.
func (m *Monitor) clearEpisodes() {
	m.startedAt = [2]map[string]int64{{}, {}}
	m.calm = [2]map[string]int{{}, {}}
	m.perfCalm = make([][3]int, len(m.e.windows))
	m.perfSince = make([][3]int64, len(m.e.windows))
}

// perfAdd adds (sign=1) or removes (sign=-1) the expected confusion counts
// of the score in ring slot.
func (m *Monitor) perfAdd(wi, slot int, sign float64) {
	m.perf[wi] = addConfusion(m.perf[wi], m.probs[slot], m.e.positive(m.e.ringScore[slot]), sign)
}

// addConfusion adds the expected TP, FP, TN, FN of one cell with calibrated
// probability p and the given prediction.
func addConfusion(c [4]float64, p float64, predictedPositive bool, sign float64) [4]float64 {
	if predictedPositive {
		c[0] += sign * p
		c[1] += sign * (1 - p)
	} else {
		c[2] += sign * (1 - p)
		c[3] += sign * p
	}
	return c
}

func estimateFrom(c [4]float64, n int) Estimate {
	est := Estimate{N: n, Accuracy: math.NaN(), Sensitivity: math.NaN(), Specificity: math.NaN()}
	if n > 0 {
		est.Accuracy = (c[0] + c[2]) / float64(n)
		est.Sensitivity = c[0] / (c[0] + c[3])
		est.Specificity = c[2] / (c[2] + c[1])
	}
	return est
}

// Baseline is the baseline the monitor compares with (its calibrated
// thresholds included); callers must not change it.
func (m *Monitor) Baseline() *Baseline { return m.b }

// Index is the number of scores observed since the monitor was made.
func (m *Monitor) Index() int64 { return m.total }

// Open lists the signals in an episode now, per tier (estimates count as
// warnings), sorted.
func (m *Monitor) Open() (warn, alarm []string) {
	for sig := range m.fired[0] {
		warn = append(warn, sig)
	}
	for wi := range m.perfLow {
		for k, sig := range estimateSignals {
			if m.perfLow[wi][k] && !slices.Contains(warn, sig) {
				warn = append(warn, sig)
			}
		}
	}
	for sig := range m.fired[1] {
		alarm = append(alarm, sig)
	}
	slices.Sort(warn)
	slices.Sort(alarm)
	return warn, alarm
}

// SinceReset is the number of scores observed since the last Reset.
func (m *Monitor) SinceReset() int64 { return m.e.t }

// Observation is one classified cell as the monitor takes it.
type Observation struct {
	// Score is p(parasitized), in [0, 1].
	Score float64
	// Features are the backbone's features; needed when UsesFeatures,
	// ignored otherwise.
	Features []float32
	// Focus is the crop's sharpness (finite, >= 0, on the scale of the
	// baseline's focus reference); needed when UsesFocus, ignored
	// otherwise.
	Focus float64
}

// Observe adds one classified cell and returns the events it triggered.
func (m *Monitor) Observe(o Observation) ([]Event, error) {
	score, features := o.Score, o.Features
	if !(score >= 0 && score <= 1) {
		return nil, fmt.Errorf("%w: score %v: want a probability in [0, 1]", ErrBadInput, score)
	}
	if m.e.useFoc && !validFocus(o.Focus) {
		return nil, fmt.Errorf("%w: focus %v: want a finite value >= 0", ErrBadInput, o.Focus)
	}
	var z []float32
	if m.e.useMMD {
		if len(features) != m.b.Embedding.InputDim {
			return nil, fmt.Errorf("%w: features: have %d values, the baseline expects %d", ErrBadInput, len(features), m.b.Embedding.InputDim)
		}
		z = m.zbuf
		m.b.Embedding.projectInto(features, m.tmp, z)
		for _, v := range z {
			if !finite(float64(v)) {
				return nil, fmt.Errorf("%w: features contain a non-finite value", ErrBadInput)
			}
		}
	}
	return m.observe(score, o.Focus, z, nil, true), nil
}

// observe takes projected features z and, when the caller has them already,
// their feature map phi.
func (m *Monitor) observe(score, focus float64, z []float32, phi []float64, emit bool) []Event {
	slot := int(m.e.t % int64(m.e.maxW))
	if m.e.useMMD {
		if phi == nil {
			m.b.Embedding.featureMap(z, m.phi)
			phi = m.phi
		}
		copy(m.z[slot*len(z):(slot+1)*len(z)], z)
	} else {
		phi = nil
	}
	for wi, w := range m.e.windows {
		if m.e.count[wi] == int64(w) {
			m.perfAdd(wi, int((m.e.t-int64(w))%int64(m.e.maxW)), -1)
		}
	}
	m.probs[slot] = m.b.Calibration.Apply(score)
	m.e.observe(score, focus, phi)
	for wi := range m.e.windows {
		m.perfAdd(wi, slot, 1)
	}
	if m.e.t%int64(m.e.maxW) == 0 {
		m.perfResum()
	}
	idx := m.total
	m.total++
	t := int(min(m.e.t, math.MaxInt32))
	for m.block+1 < len(m.cal.Blocks) && m.cal.Blocks[m.block+1] <= t {
		m.block++
	}
	var events []Event
	// hot: signals with a test above its warn threshold on this cell.
	var hot map[string]bool
	for i, ts := range m.cal.Tests {
		if m.block < m.cal.Start[i] {
			continue
		}
		s := m.e.stats[i]
		if math.IsNaN(s) {
			continue
		}
		if s > m.cal.Warn[i][m.block] {
			if hot == nil {
				hot = map[string]bool{}
			}
			hot[ts.Signal] = true
		}
		for tier, th := range [2][][]float64{m.cal.Warn, m.cal.Alarm} {
			h := th[i][m.block]
			if s > h && !m.fired[tier][ts.Signal] {
				m.fired[tier][ts.Signal] = true
				m.startedAt[tier][ts.Signal], m.calm[tier][ts.Signal] = idx, 0
				events = append(events, Event{Index: idx, Signal: ts.Signal, Level: [2]string{LevelWarn, LevelAlarm}[tier], Phase: PhaseStart, Statistic: s, Threshold: h, Window: ts.Window})
			}
		}
	}
	for tier := range m.fired {
		for sig := range m.fired[tier] {
			if !m.fired[tier][sig] {
				continue
			}
			if hot[sig] {
				m.calm[tier][sig] = 0
				continue
			}
			m.calm[tier][sig]++
			if m.calm[tier][sig] >= m.calmNeed[sig] {
				// Deleted, not set false: a map of signals in an episode.
				delete(m.fired[tier], sig)
				events = append(events, Event{Index: idx, Signal: sig, Level: [2]string{LevelWarn, LevelAlarm}[tier], Phase: PhaseEnd,
					Window: m.calmNeed[sig], Since: m.startedAt[tier][sig]})
				delete(m.calm[tier], sig)
				delete(m.startedAt[tier], sig)
			}
		}
	}
	// Only the largest window's estimate alerts: on small windows the
	// estimate's own sampling noise dwarfs the baseline's interval.
	for wi, w := range m.e.windows {
		if w != m.e.maxW || m.e.count[wi] < int64(w) {
			continue
		}
		p := m.estimate(wi)
		vals := [3]float64{p.Accuracy, p.Sensitivity, p.Specificity}
		los := m.estimateFloor
		for k, sig := range estimateSignals {
			switch {
			case vals[k] < los[k] && !m.perfLow[wi][k]:
				m.perfLow[wi][k], m.perfCalm[wi][k], m.perfSince[wi][k] = true, 0, idx
				events = append(events, Event{Index: idx, Signal: sig, Level: LevelWarn, Phase: PhaseStart, Statistic: vals[k], Threshold: los[k], Window: p.Window})
			case vals[k] < los[k]:
				m.perfCalm[wi][k] = 0
			case m.perfLow[wi][k]:
				if m.perfCalm[wi][k]++; m.perfCalm[wi][k] >= w {
					m.perfLow[wi][k], m.perfCalm[wi][k] = false, 0
					events = append(events, Event{Index: idx, Signal: sig, Level: LevelWarn, Phase: PhaseEnd, Statistic: vals[k], Threshold: los[k], Window: p.Window, Since: m.perfSince[wi][k]})
				}
			}
		}
	}
	if !emit {
		return nil
	}
	return events
}

// Estimate is the label-free (confidence-based) performance estimate on one
// window: the expected accuracy, sensitivity and specificity if the
// calibrated probabilities are right. It cannot see concept drift (the same
// image meaning something else) nor inputs unlike anything in the test set,
// where the probabilities themselves are wrong; it reacts to shifts in the
// mix of confident and unsure cases and in prevalence.
type Estimate struct {
	Window      int     `json:"window"`
	N           int     `json:"n"`
	Accuracy    float64 `json:"accuracy"`
	Sensitivity float64 `json:"sensitivity"`
	Specificity float64 `json:"specificity"`
}

// Performance returns the estimate for each window size.
func (m *Monitor) Performance() []Estimate {
	out := make([]Estimate, 0, len(m.e.windows))
	for wi := range m.e.windows {
		out = append(out, m.estimate(wi))
	}
	return out
}

func (m *Monitor) estimate(wi int) Estimate {
	est := estimateFrom(m.perf[wi], int(m.e.count[wi]))
	est.Window = m.e.windows[wi]
	return est
}

// perfResum rebuilds the expected confusion counts from the ring, bounding
// floating-point drift from the running sums (amortised O(1) per score).
func (m *Monitor) perfResum() {
	clear(m.perf)
	for wi := range m.e.windows {
		for i := m.e.t - m.e.count[wi]; i < m.e.t; i++ {
			m.perfAdd(wi, int(i%int64(m.e.maxW)), 1)
		}
	}
}

// WindowScores returns the scores in the window of size w, oldest first.
func (m *Monitor) WindowScores(w int) []float64 {
	wi := slices.Index(m.e.windows, w)
	if wi < 0 {
		return nil
	}
	out := make([]float64, 0, m.e.count[wi])
	for i := m.e.t - m.e.count[wi]; i < m.e.t; i++ {
		out = append(out, m.e.ringScore[int(i%int64(m.e.maxW))])
	}
	return out
}

// Windows returns the window sizes, ascending.
func (m *Monitor) Windows() []int { return slices.Clone(m.e.windows) }

// TestStatus is one test's current statistic and thresholds.
type TestStatus struct {
	TestSpec
	N         int     `json:"n"`
	Active    bool    `json:"active"`
	Statistic float64 `json:"statistic"`
	Warn      float64 `json:"warn"`
	Alarm     float64 `json:"alarm"`
}

// Status returns every test's current statistic and thresholds (for metrics).
func (m *Monitor) Status() []TestStatus {
	var out []TestStatus
	for i, ts := range m.cal.Tests {
		wi := slices.Index(m.e.windows, ts.Window)
		s := m.e.stats[i]
		out = append(out, TestStatus{TestSpec: ts, N: int(m.e.count[wi]), Active: m.block >= m.cal.Start[i] && !math.IsNaN(s) && m.e.t > 0,
			Statistic: s, Warn: m.cal.Warn[i][m.block], Alarm: m.cal.Alarm[i][m.block]})
	}
	return out
}

// MonitorStateSchema identifies the persisted monitor state format.
const MonitorStateSchema = "scopewatch.drift-state/v1"

// monitorState is what MarshalBinary persists: the scores of the largest
// window (and their projected features), counters and latches; everything
// else is rebuilt from them in O(window log n).
type monitorState struct {
	Schema     string      `json:"schema"`
	Baseline   string      `json:"baseline"` // fingerprint
	Total      int64       `json:"total"`
	SinceReset int64       `json:"since_reset"`
	Scores     []float64   `json:"scores"`
	Projected  [][]float32 `json:"projected,omitempty"`
	Focus      []float64   `json:"focus,omitempty"` // one per score when the focus signal is on
	Warned     []string    `json:"warned"`
	Alarmed    []string    `json:"alarmed"`
	PerfLow    []string    `json:"perf_low"` // "signal/window" of estimates that alerted
	// Episodes are the open episodes' start and calm counts, so that a
	// restored monitor ends them on the same cell (absent in states saved
	// before episodes ended: they then end a window later).
	Episodes     []episodeState         `json:"episodes,omitempty"`
	PerfEpisodes map[string]perfEpisode `json:"perf_episodes,omitempty"` // "signal/window" of open estimate episodes
}

type perfEpisode struct {
	Since int64 `json:"since"`
	Calm  int   `json:"calm"`
}

type episodeState struct {
	Signal string `json:"signal"`
	Level  string `json:"level"`
	Since  int64  `json:"since"`
	Calm   int    `json:"calm"`
}

// ErrStateMismatch is returned when restoring a state saved against another
// baseline; the caller should Reset instead.
var ErrStateMismatch = errors.New("drift state belongs to another baseline")

// MarshalBinary encodes the monitor's state (JSON).
func (m *Monitor) MarshalBinary() ([]byte, error) {
	st := monitorState{Schema: MonitorStateSchema, Baseline: m.b.Fingerprint(), Total: m.total, SinceReset: m.e.t}
	for wi, w := range m.e.windows {
		for k, sig := range estimateSignals {
			if m.perfLow[wi][k] {
				st.PerfLow = append(st.PerfLow, fmt.Sprintf("%s/%d", sig, w))
			}
		}
	}
	n := min(m.e.t, int64(m.e.maxW))
	for i := m.e.t - n; i < m.e.t; i++ {
		slot := int(i % int64(m.e.maxW))
		st.Scores = append(st.Scores, m.e.ringScore[slot])
		if m.e.useFoc {
			st.Focus = append(st.Focus, m.e.ringFoc[slot])
		}
		if m.e.useMMD {
			d := m.b.Embedding.Dim
			st.Projected = append(st.Projected, slices.Clone(m.z[slot*d:(slot+1)*d]))
		}
	}
	for s := range m.fired[0] {
		st.Warned = append(st.Warned, s)
	}
	for s := range m.fired[1] {
		st.Alarmed = append(st.Alarmed, s)
	}
	slices.Sort(st.Warned)
	slices.Sort(st.Alarmed)
	for tier, sigs := range [2][]string{st.Warned, st.Alarmed} {
		for _, sig := range sigs {
			st.Episodes = append(st.Episodes, episodeState{Signal: sig, Level: [2]string{LevelWarn, LevelAlarm}[tier], Since: m.startedAt[tier][sig], Calm: m.calm[tier][sig]})
		}
	}
	for wi, w := range m.e.windows {
		for k, sig := range estimateSignals {
			if m.perfLow[wi][k] {
				if st.PerfEpisodes == nil {
					st.PerfEpisodes = map[string]perfEpisode{}
				}
				st.PerfEpisodes[fmt.Sprintf("%s/%d", sig, w)] = perfEpisode{Since: m.perfSince[wi][k], Calm: m.perfCalm[wi][k]}
			}
		}
	}
	return json.Marshal(st)
}

// MarshalJSON is MarshalBinary.
func (m *Monitor) MarshalJSON() ([]byte, error) { return m.MarshalBinary() }

// UnmarshalBinary restores a state made by MarshalBinary on a monitor built
// from the same baseline. On error the monitor is left as it was.
func (m *Monitor) UnmarshalBinary(p []byte) error {
	var st monitorState
	d := json.NewDecoder(bytes.NewReader(p))
	d.DisallowUnknownFields()
	if err := d.Decode(&st); err != nil {
		return fmt.Errorf("decode drift state: %w", err)
	}
	if st.Schema != MonitorStateSchema {
		return fmt.Errorf("decode drift state: schema %q, want %q", st.Schema, MonitorStateSchema)
	}
	if st.Baseline != m.b.Fingerprint() {
		return ErrStateMismatch
	}
	want := min(st.SinceReset, int64(m.e.maxW))
	if st.SinceReset < 0 || st.Total < st.SinceReset || int64(len(st.Scores)) != want {
		return fmt.Errorf("decode drift state: %d scores for %d since reset (window %d, total %d)", len(st.Scores), st.SinceReset, m.e.maxW, st.Total)
	}
	if m.e.useMMD != (len(st.Projected) > 0 || want == 0) || (m.e.useMMD && len(st.Projected) != len(st.Scores)) {
		return fmt.Errorf("decode drift state: %d projected rows for %d scores", len(st.Projected), len(st.Scores))
	}
	if m.e.useFoc && len(st.Focus) != len(st.Scores) || !m.e.useFoc && len(st.Focus) != 0 {
		return fmt.Errorf("decode drift state: %d focus values for %d scores", len(st.Focus), len(st.Scores))
	}
	for i, f := range st.Focus {
		if !validFocus(f) {
			return fmt.Errorf("decode drift state: focus %d = %v", i, f)
		}
	}
	for i, s := range st.Scores {
		if !(s >= 0 && s <= 1) {
			return fmt.Errorf("decode drift state: score %d = %v", i, s)
		}
		if m.e.useMMD {
			if len(st.Projected[i]) != m.b.Embedding.Dim {
				return fmt.Errorf("decode drift state: projected row %d has %d values, want %d", i, len(st.Projected[i]), m.b.Embedding.Dim)
			}
			for _, v := range st.Projected[i] {
				if !finite(float64(v)) {
					return fmt.Errorf("decode drift state: projected row %d is not finite", i)
				}
			}
		}
	}
	for _, s := range slices.Concat(st.Warned, st.Alarmed) {
		if !slices.ContainsFunc(m.cal.Tests, func(t TestSpec) bool { return t.Signal == s }) {
			return fmt.Errorf("decode drift state: unknown signal %q", s)
		}
	}
	m.Reset()
	m.e.t = st.SinceReset - int64(len(st.Scores))
	for i, s := range st.Scores {
		var z []float32
		if m.e.useMMD {
			z = st.Projected[i]
		}
		var f float64
		if m.e.useFoc {
			f = st.Focus[i]
		}
		m.observe(s, f, z, nil, false)
	}
	m.total = st.Total
	m.fired = [2]map[string]bool{{}, {}}
	m.clearEpisodes()
	for _, s := range st.Warned {
		m.fired[0][s] = true
	}
	for _, s := range st.Alarmed {
		m.fired[1][s] = true
	}
	for _, e := range st.Episodes {
		tier := slices.Index([]string{LevelWarn, LevelAlarm}, e.Level)
		if tier < 0 || !m.fired[tier][e.Signal] || e.Calm < 0 {
			continue // not an open episode of this state: ignored, as a state without episodes
		}
		m.startedAt[tier][e.Signal], m.calm[tier][e.Signal] = e.Since, e.Calm
	}
	for wi, w := range m.e.windows {
		for k, sig := range estimateSignals {
			if e, ok := st.PerfEpisodes[fmt.Sprintf("%s/%d", sig, w)]; ok && e.Calm >= 0 {
				m.perfCalm[wi][k], m.perfSince[wi][k] = e.Calm, e.Since
			}
		}
	}
	m.perfLow = make([][3]bool, len(m.e.windows))
	for _, key := range st.PerfLow {
		for wi, w := range m.e.windows {
			for k, sig := range estimateSignals {
				if key == fmt.Sprintf("%s/%d", sig, w) {
					m.perfLow[wi][k] = true
				}
			}
		}
	}
	return nil
}

// UnmarshalJSON is UnmarshalBinary.
func (m *Monitor) UnmarshalJSON(p []byte) error { return m.UnmarshalBinary(p) }
