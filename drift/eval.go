package drift

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// EvalRows is a pool of classified cells to draw evaluation streams from:
// scores, and optionally labels (for prevalence shifts) and features.
type EvalRows struct {
	Scores   []float64
	Labels   []int
	Features [][]float32
	Slides   []string  // optional slide id per row
	Focus    []float64 // optional focus per row (needed by a detector with the focus signal)
	// Appearance holds optional image statistics per row (columns a_NAME
	// of the CSV), named by AppearanceNames: what the slide quality gate
	// reads.
	Appearance      [][]float64
	AppearanceNames []string

	z   [][]float32
	phi [][]float64
}

// prepare checks the rows and projects the features once, so that streams
// drawn from the pool cost no projection per step.
func (r *EvalRows) prepare(b *Baseline, needFeatures, needFocus bool) error {
	if len(r.Scores) == 0 {
		return fmt.Errorf("no rows")
	}
	if r.Labels != nil && len(r.Labels) != len(r.Scores) {
		return fmt.Errorf("%d labels for %d scores", len(r.Labels), len(r.Scores))
	}
	for i, s := range r.Scores {
		if !(s >= 0 && s <= 1) {
			return fmt.Errorf("row %d: score %v not in [0, 1]", i, s)
		}
	}
	if needFocus {
		if len(r.Focus) != len(r.Scores) {
			return fmt.Errorf("the detector uses focus: %d focus values for %d scores (a focus column is needed)", len(r.Focus), len(r.Scores))
		}
		for i, f := range r.Focus {
			if !validFocus(f) {
				return fmt.Errorf("row %d: focus %v: want a finite value >= 0", i, f)
			}
		}
	}
	if !needFeatures || r.phi != nil {
		return nil
	}
	if r.z != nil && r.Features == nil { // already projected (the baseline's own rows)
		r.phi = make([][]float64, len(r.z))
		for i, z := range r.z {
			if len(z) != b.Embedding.Dim {
				return fmt.Errorf("row %d: %d projected values, want %d", i, len(z), b.Embedding.Dim)
			}
			r.phi[i] = make([]float64, b.Embedding.RFFDim)
			b.Embedding.featureMap(z, r.phi[i])
		}
		return nil
	}
	if len(r.Features) != len(r.Scores) {
		return fmt.Errorf("the detector uses embeddings: %d feature rows for %d scores", len(r.Features), len(r.Scores))
	}
	r.z = make([][]float32, len(r.Scores))
	r.phi = make([][]float64, len(r.Scores))
	for i, f := range r.Features {
		z, err := b.Embedding.Project(f)
		if err != nil {
			return fmt.Errorf("row %d: %w", i, err)
		}
		r.z[i] = z
		r.phi[i] = make([]float64, b.Embedding.RFFDim)
		b.Embedding.featureMap(z, r.phi[i])
	}
	return nil
}

// Sampler draws row indices of an EvalRows pool for one run.
type Sampler interface {
	Next(r *rand.Rand) int
}

// Shuffled draws rows without replacement in random order, reshuffling when
// the pool is exhausted: new cells in random slide order.
type Shuffled struct {
	N    int
	perm []int
	i    int
}

func (s *Shuffled) Next(r *rand.Rand) int {
	if s.i >= len(s.perm) {
		s.perm = r.Perm(s.N)
		s.i = 0
	}
	s.i++
	return s.perm[s.i-1]
}

// SlideOrder sends a pool slide by slide, as a microscope does: whole
// slides in random order (each once until all were sent, then reshuffled),
// each slide's rows in random order.
type SlideOrder struct {
	slides [][]int
	order  []int
	cur    []int
	next   int
}

// NewSlideOrder groups rows by slide id for a SlideOrder sampler.
func NewSlideOrder(slides []string) (*SlideOrder, error) {
	if len(slides) == 0 {
		return nil, fmt.Errorf("slide order: the pool has no slide ids (a slide column is needed)")
	}
	idx := map[string]int{}
	s := &SlideOrder{}
	for i, id := range slides {
		k, ok := idx[id]
		if !ok {
			k = len(s.slides)
			idx[id] = k
			s.slides = append(s.slides, nil)
		}
		s.slides[k] = append(s.slides[k], i)
	}
	return s, nil
}

// Slides is the number of slides in the pool.
func (s *SlideOrder) Slides() int { return len(s.slides) }

// Clone returns a sampler over the same slides with its own position.
func (s *SlideOrder) Clone() *SlideOrder { return &SlideOrder{slides: s.slides} }

func (s *SlideOrder) Next(r *rand.Rand) int {
	if len(s.cur) == 0 {
		if s.next >= len(s.order) {
			s.order = r.Perm(len(s.slides))
			s.next = 0
		}
		rows := s.slides[s.order[s.next]]
		s.next++
		s.cur = append(s.cur[:0], rows...)
		r.Shuffle(len(s.cur), func(i, j int) { s.cur[i], s.cur[j] = s.cur[j], s.cur[i] })
	}
	i := s.cur[len(s.cur)-1]
	s.cur = s.cur[:len(s.cur)-1]
	return i
}

// Resample draws rows with replacement.
type Resample struct{ N int }

func (s Resample) Next(r *rand.Rand) int { return r.IntN(s.N) }

// Prevalence draws a class with probability Rate of parasitized, then a row
// of that class uniformly: a prevalence shift with the classifier's own
// behaviour on each class unchanged.
type Prevalence struct {
	Rate     float64
	pos, neg []int
}

// NewPrevalence indexes labels for a Prevalence sampler.
func NewPrevalence(labels []int, rate float64) (*Prevalence, error) {
	p := &Prevalence{Rate: rate}
	for i, l := range labels {
		if l == 1 {
			p.pos = append(p.pos, i)
		} else {
			p.neg = append(p.neg, i)
		}
	}
	if len(p.pos) == 0 || len(p.neg) == 0 || !(rate >= 0 && rate <= 1) {
		return nil, fmt.Errorf("prevalence %v: need labels of both classes and a rate in [0, 1]", rate)
	}
	return p, nil
}

func (p *Prevalence) Next(r *rand.Rand) int {
	if r.Float64() < p.Rate {
		return p.pos[r.IntN(len(p.pos))]
	}
	return p.neg[r.IntN(len(p.neg))]
}

// RunLengths summarises run lengths to the first event of a tier without
// drift.
type RunLengths struct {
	Runs     int            `json:"runs"`
	Censored int            `json:"censored"` // runs that reached MaxSteps without an event (counted as MaxSteps)
	Mean     float64        `json:"mean"`
	SE       float64        `json:"se"` // standard error of the mean
	Median   float64        `json:"median"`
	P10      float64        `json:"p10"` // a memoryless detector has P10 ~ 0.105, median ~ 0.69, P90 ~ 2.3 times the mean
	P90      float64        `json:"p90"`
	BySignal map[string]int `json:"by_signal"` // which signal fired first
}

func summarise(rl []float64, censored int, by map[string]int) RunLengths {
	var s, s2 float64
	for _, v := range rl {
		s += v
		s2 += v * v
	}
	n := float64(len(rl))
	mean := s / n
	sorted := sortedCopy(rl)
	return RunLengths{Runs: len(rl), Censored: censored, Mean: mean, SE: math.Sqrt(max(s2/n-mean*mean, 0) / n), Median: quantileSorted(sorted, 0.5),
		P10: quantileSorted(sorted, 0.1), P90: quantileSorted(sorted, 0.9), BySignal: by}
}

// NullResult holds the drift-free run lengths of both tiers.
type NullResult struct {
	Warn  RunLengths `json:"warn"`
	Alarm RunLengths `json:"alarm"`
}

// EvalRunLengths runs the detectors on runs drift-free streams drawn from
// rows and returns the run lengths to the first warn and the first alarm
// (sequential tests only; the performance estimate is not calibrated).
func (b *Baseline) EvalRunLengths(ctx context.Context, rows *EvalRows, newSampler func() Sampler, runs, maxSteps int, seed uint64) (NullResult, error) {
	m, err := NewMonitor(b)
	if err != nil {
		return NullResult{}, err
	}
	if err := rows.prepare(b, m.UsesFeatures(), m.UsesFocus()); err != nil {
		return NullResult{}, fmt.Errorf("eval rows: %w", err)
	}
	var warn, alarm []float64
	var cw, ca int
	byW, byA := map[string]int{}, map[string]int{}
	for run := range runs {
		if err := ctx.Err(); err != nil {
			return NullResult{}, err
		}
		m.Reset()
		r := newRand(seed, uint64(run))
		s := newSampler()
		wt, at := -1, -1
		for step := 0; step < maxSteps && at < 0; step++ {
			i := s.Next(r)
			for _, ev := range m.observeRow(rows, i) {
				if !isSequential(ev.Signal) {
					continue
				}
				if ev.Phase == PhaseStart && ev.Level == LevelWarn && wt < 0 {
					wt = step + 1
					byW[ev.Signal]++
				}
				if ev.Phase == PhaseStart && ev.Level == LevelAlarm && at < 0 {
					at = step + 1
					byA[ev.Signal]++
				}
			}
		}
		if wt < 0 {
			wt, cw = maxSteps, cw+1
		}
		if at < 0 {
			at, ca = maxSteps, ca+1
		}
		warn, alarm = append(warn, float64(wt)), append(alarm, float64(at))
	}
	return NullResult{Warn: summarise(warn, cw, byW), Alarm: summarise(alarm, ca, byA)}, nil
}

func isSequential(signal string) bool { return slices.Contains(signalOrder[:], signal) }

func (m *Monitor) observeRow(rows *EvalRows, i int) []Event {
	var f float64
	if m.e.useFoc {
		f = rows.Focus[i]
	}
	if m.e.useMMD {
		return m.observe(rows.Scores[i], f, rows.z[i], rows.phi[i], true)
	}
	return m.observe(rows.Scores[i], f, nil, nil, true)
}

// DelayResult summarises detection of a shift that starts at Onset.
type DelayResult struct {
	Runs             int            `json:"runs"`
	FalseBeforeOnset int            `json:"false_before_onset"` // runs with a false event before the onset (then Reset, as if acknowledged)
	Detected         int            `json:"detected"`           // alarm within After scores of the onset
	Within           int            `json:"within"`             // alarm within WithinLimit scores of the onset
	WithinLimit      int            `json:"within_limit"`
	Missed           int            `json:"missed"`
	MeanDelay        float64        `json:"mean_delay"` // over detected runs, in scores after the onset
	MedianDelay      float64        `json:"median_delay"`
	BySignal         map[string]int `json:"by_signal"`
}

// DelayConfig sets up a detection-delay evaluation.
type DelayConfig struct {
	Runs   int
	Onset  int // drift-free scores before the shift
	After  int // scores after the onset before a run counts as missed
	Within int // the delay target (e.g. 1000)
	Level  string
	Seed   uint64
}

// EvalDelay streams Onset drift-free rows (from nullRows) and then shifted
// rows (from shiftRows) and measures the delay to the first event of
// cfg.Level. A false event before the onset resets the monitor and the run
// continues, so every run measures a delay.
func (b *Baseline) EvalDelay(ctx context.Context, nullRows *EvalRows, newNull func() Sampler, shiftRows *EvalRows, newShift func() Sampler, cfg DelayConfig) (DelayResult, error) {
	m, err := NewMonitor(b)
	if err != nil {
		return DelayResult{}, err
	}
	if err := nullRows.prepare(b, m.UsesFeatures(), m.UsesFocus()); err != nil {
		return DelayResult{}, fmt.Errorf("drift-free rows: %w", err)
	}
	if err := shiftRows.prepare(b, m.UsesFeatures(), m.UsesFocus()); err != nil {
		return DelayResult{}, fmt.Errorf("shifted rows: %w", err)
	}
	if cfg.Level == "" {
		cfg.Level = LevelAlarm
	}
	res := DelayResult{Runs: cfg.Runs, WithinLimit: cfg.Within, BySignal: map[string]int{}}
	var delays []float64
	for run := range cfg.Runs {
		if err := ctx.Err(); err != nil {
			return DelayResult{}, err
		}
		m.Reset()
		r := newRand(cfg.Seed, uint64(run))
		ns, ss := newNull(), newShift()
		at, sig := -1, ""
		falseAlarm := false
		for step := 0; step < cfg.Onset+cfg.After && at < 0; step++ {
			var evs []Event
			if step < cfg.Onset {
				evs = m.observeRow(nullRows, ns.Next(r))
			} else {
				evs = m.observeRow(shiftRows, ss.Next(r))
			}
			for _, ev := range evs {
				if isSequential(ev.Signal) && ev.Phase == PhaseStart && ev.Level == cfg.Level && at < 0 {
					at, sig = step, ev.Signal
				}
			}
			if at >= 0 && at < cfg.Onset {
				// A false alarm: the operator acknowledges it, the monitor
				// resets, and the run goes on (windows refill before the onset
				// or, if the onset is near, during the shift, as in the field).
				falseAlarm = true
				at, sig = -1, ""
				m.Reset()
			}
		}
		if falseAlarm {
			res.FalseBeforeOnset++
		}
		switch {
		case at < 0:
			res.Missed++
		default:
			d := at - cfg.Onset + 1
			res.Detected++
			if d <= cfg.Within {
				res.Within++
			}
			res.BySignal[sig]++
			delays = append(delays, float64(d))
		}
	}
	if len(delays) > 0 {
		res.MeanDelay = sum(delays) / float64(len(delays))
		slices.Sort(delays)
		res.MedianDelay = quantileSorted(delays, 0.5)
	}
	return res, nil
}

// ReferenceRows returns the baseline's reference rows as an evaluation pool
// (scores, labels and, when the baseline has them, projected embeddings).
func (b *Baseline) ReferenceRows() *EvalRows {
	r := &EvalRows{Scores: slices.Clone(b.Scores), Labels: slices.Clone(b.Labels), Focus: slices.Clone(b.Focus)}
	if b.Embedding != nil {
		r.z = b.Projected
	}
	return r
}

// HasFeatures reports whether the rows carry embeddings.
func (r *EvalRows) HasFeatures() bool { return r.Features != nil || r.z != nil }

// DropFeatures removes the embeddings (for detectors without the embedding signal).
func (r *EvalRows) DropFeatures() { r.Features, r.z, r.phi = nil, nil, nil }
