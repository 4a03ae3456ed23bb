package drift

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
)

// Null models for the drift-free streams simulated at calibration.
const (
	// NullExchangeable draws each new score from a Pólya urn over the
	// reference rows and the stream so far (untied scores placed uniformly
	// in the gap around the drawn reference value). The reference and the
	// stream are then exchangeable, as when both are samples from the same
	// distribution, so the thresholds include the reference's own sampling
	// error. When the baseline knows each row's slide, the urn is over
	// slides instead: each simulated stream reweights the reference slides
	// with Dirichlet(1, ..., 1) weights (a Bayesian bootstrap of slides),
	// because cells of a slide are alike and new slides differ from the
	// test set's by more than cell sampling explains.
	NullExchangeable = "exchangeable"
	// NullBootstrap resamples the reference rows with replacement: the
	// stream comes from the reference's empirical distribution. Right only
	// for streams that literally resample the test set.
	NullBootstrap = "bootstrap"
	// NullSlides sends the stream slide after slide, as a microscope does:
	// each simulated slide is one reference slide, drawn from a Pólya urn
	// over the reference slides, and its cells are drawn from a Pólya urn
	// over that slide's rows, for a length uniform in SlideCells. The
	// windows then see one slide's stain, focus and parasitemia at a time,
	// and the thresholds include that slide-to-slide spread, which the
	// other null models average away (measured with them: a nominal stream
	// sent slide by slide alarmed within its first slide). Needs a
	// reference of whole slides (BaselineConfig.Slides, at least
	// MinSlideRows cells on each of MinSlides slides).
	NullSlides = "slides"
)

// ErrTooFewSlides says a reference has too few whole slides for the slides
// null model (see MinSlides, MinSlideRows); it is also an
// ErrInvalidBaseline.
var ErrTooFewSlides = errors.New("too few whole slides for the slides null model")

// Limits of a reference the slide null model can use: enough slides for
// the urn to stand for new slides, and enough cells per slide for a window
// within one slide to be drawn from it rather than copied.
const (
	MinSlides    = 20
	MinSlideRows = 50
)

func validNull(null string) bool {
	return null == NullExchangeable || null == NullBootstrap || null == NullSlides
}

// Calibration holds the thresholds of every test for both tiers, per block
// of steps since reset: Blocks[j] is the first step (1-based) of block j and
// the last block extends forever.
type Calibration struct {
	ERT     int                `json:"ert"`
	WarnERT int                `json:"warn_ert"`
	Null    string             `json:"null"`
	Sims    int                `json:"sims"`
	Horizon int                `json:"horizon"`
	Seed    uint64             `json:"seed"`
	Weights map[string]float64 `json:"weights"`
	Tests   []TestSpec         `json:"tests"`
	Blocks  []int              `json:"blocks"`
	// Start[i] is the first block in which test i is evaluated (its window
	// has reached its minimum fill); thresholds before it are unused.
	Start []int       `json:"start"`
	Warn  [][]float64 `json:"warn"`
	Alarm [][]float64 `json:"alarm"`
	// SlideCells is the simulated slides' length range (NullSlides only).
	SlideCells [2]int `json:"slide_cells,omitzero"`
}

// Config is the configuration this calibration was made with (its ERTs,
// simulations, null model, seed, signals with their shares and windows,
// smallest first): the starting point for calibrating it again with a few
// settings changed.
func (c *Calibration) Config() CalibrationConfig {
	cc := CalibrationConfig{ERT: c.ERT, WarnERT: c.WarnERT, Sims: c.Sims, Null: c.Null, Seed: c.Seed, SlideCells: c.SlideCells, Signals: map[string]float64{}}
	for _, t := range c.Tests {
		cc.Signals[t.Signal] = c.Weights[t.Signal]
		if !slices.Contains(cc.Windows, t.Window) {
			cc.Windows = append(cc.Windows, t.Window)
		}
	}
	slices.Sort(cc.Windows)
	return cc
}

// CalibrationConfig says what to calibrate.
type CalibrationConfig struct {
	ERT     int                // alarm tier expected run time without drift, in scores
	WarnERT int                // warn tier; 0 means ERT/10
	Windows []int              // window sizes
	Signals map[string]float64 // signal -> share of the false-alarm budget; nil means all available, equal shares
	Sims    int                // simulated streams
	Horizon int                // simulated steps per stream; 0 means 3 * largest window (NullSlides: at least 6 slides)
	Null    string             // NullExchangeable (default), NullBootstrap or NullSlides
	// SlideCells is the length range [min, max] of the slides NullSlides
	// simulates; zero means each reference slide's own cell count, so the
	// reference should be made of slides as long as the device's. Ignored
	// by the other nulls.
	SlideCells [2]int
	Seed       uint64
	Workers    int // 0 means min(2, GOMAXPROCS)

	slideHorizon bool // Horizon was defaulted: calibrate stretches it over slides
}

// DefaultWarnERT is the warn tier's expected run time for an alarm tier of
// ert: ten times as many warnings as alarms, so a warning is an early look
// rather than a second alarm.
func DefaultWarnERT(ert int) int { return max(1, ert/10) }

func (c *CalibrationConfig) withDefaults(haveEmbedding, haveFocus bool) (CalibrationConfig, error) {
	o := *c
	if o.ERT == 0 {
		o.ERT = 5000
	}
	if o.WarnERT == 0 {
		o.WarnERT = DefaultWarnERT(o.ERT)
	}
	if len(o.Windows) == 0 {
		o.Windows = []int{50, 200, 1000}
	}
	if o.Sims == 0 {
		o.Sims = 2000
	}
	if o.Null == "" {
		o.Null = NullExchangeable
	}
	o.Windows = slices.Clone(o.Windows)
	slices.Sort(o.Windows)
	o.Windows = slices.Compact(o.Windows)
	if o.Horizon == 0 {
		// Thresholds settle only about one window after the largest window
		// fills; with 2x the last block's thresholds were measurably too
		// high for the rest of the run.
		o.Horizon = 3 * o.Windows[len(o.Windows)-1]
		// A slide-by-slide stream's false alarms come at slide changes:
		// the last block must hold several of them (see calibrate).
		o.slideHorizon = o.Null == NullSlides
	}
	if o.Signals == nil {
		o.Signals = map[string]float64{SignalScores: 1, SignalRate: 1}
		if haveEmbedding {
			o.Signals[SignalEmbedding] = 1
		}
		if haveFocus {
			o.Signals[SignalFocus] = 1
		}
	}
	switch {
	case o.ERT < 2 || o.WarnERT < 2 || o.WarnERT > o.ERT:
		return o, fmt.Errorf("ert %d, warn ert %d: want 2 <= warn <= ert", o.ERT, o.WarnERT)
	case o.Windows[0] < 2 || o.Windows[len(o.Windows)-1] > 100000:
		return o, fmt.Errorf("windows %v: want sizes in 2..100000", o.Windows)
	case o.Sims < 100:
		return o, fmt.Errorf("sims %d: want at least 100", o.Sims)
	case o.Horizon < o.Windows[len(o.Windows)-1]+10:
		return o, fmt.Errorf("horizon %d: want more than the largest window %d", o.Horizon, o.Windows[len(o.Windows)-1])
	case !validNull(o.Null):
		return o, fmt.Errorf("null %q: want %q, %q or %q", o.Null, NullExchangeable, NullBootstrap, NullSlides)
	}
	if o.Null == NullSlides && o.SlideCells != [2]int{} {
		if o.SlideCells[0] < 10 || o.SlideCells[1] < o.SlideCells[0] || o.SlideCells[1] > 1000000 {
			return o, fmt.Errorf("slide cells %v: want 10 <= min <= max <= 1000000", o.SlideCells)
		}
	} else if o.Null != NullSlides {
		o.SlideCells = [2]int{}
	}
	if n := int64(o.Sims) * int64(o.Horizon) * int64(len(o.Windows)*len(o.Signals)) * 4; n > 4<<30 {
		return o, fmt.Errorf("calibration needs %d MiB (sims x horizon x tests x 4 bytes): lower sims or the largest window", n>>20)
	}
	var total float64
	for s, w := range o.Signals {
		switch s {
		case SignalScores, SignalRate:
		case SignalEmbedding:
			if !haveEmbedding {
				return o, fmt.Errorf("signal %s: the baseline has no embedding reference (no features given)", s)
			}
		case SignalFocus:
			if !haveFocus {
				return o, fmt.Errorf("signal %s: the baseline has no focus reference (no focus values given)", s)
			}
		default:
			return o, fmt.Errorf("signal %q: want %s, %s, %s or %s", s, SignalScores, SignalRate, SignalEmbedding, SignalFocus)
		}
		if !(w > 0) || math.IsInf(w, 0) {
			return o, fmt.Errorf("signal %s weight %v: want > 0", s, w)
		}
		total += w
	}
	if total == 0 {
		return o, fmt.Errorf("no signal enabled")
	}
	return o, nil
}

// testsFor lists the tests in a fixed order: signals in a canonical order,
// then windows ascending.
func testsFor(signals map[string]float64, windows []int) []TestSpec {
	var ts []TestSpec
	for _, s := range signalOrder {
		if _, ok := signals[s]; !ok {
			continue
		}
		for _, w := range windows {
			ts = append(ts, TestSpec{Signal: s, Window: w})
		}
	}
	return ts
}

// blockStarts returns the first steps of the threshold blocks: short blocks
// while the windows fill (the null distribution changes fast), growing
// geometrically, and one final block of at least half the largest window,
// whose thresholds hold from then on.
func blockStarts(windows []int, horizon int) []int {
	maxW := windows[len(windows)-1]
	last := horizon - maxW/2
	set := map[int]bool{1: true, last: true}
	for x := 1; x < last; x = max(x+5, x*5/4) {
		set[x] = true
	}
	for _, w := range windows {
		for _, v := range []int{minFill(w), w} {
			if v < last {
				set[v] = true
			}
		}
	}
	var b []int
	for v := range set {
		b = append(b, v)
	}
	slices.Sort(b)
	return b
}

// calibrate simulates cfg.Sims drift-free streams through the engine and
// sets the thresholds of both tiers.
func calibrate(ctx context.Context, ref *reference, cfg CalibrationConfig) (*Calibration, error) {
	if cfg.Null == NullSlides {
		if err := checkSlideReference(ref); err != nil {
			return nil, fmt.Errorf("%w: detector: %w", ErrInvalidBaseline, err)
		}
		if cfg.slideHorizon {
			longest := cfg.SlideCells[1]
			for _, rows := range ref.slideRows {
				if cfg.SlideCells[1] == 0 {
					longest = max(longest, len(rows))
				}
			}
			cfg.Horizon = max(cfg.Horizon, 6*longest)
		}
		if n := int64(cfg.Sims) * int64(cfg.Horizon) * int64(len(cfg.Windows)*len(cfg.Signals)) * 4; n > 4<<30 {
			return nil, fmt.Errorf("calibration needs %d MiB (sims x horizon x tests x 4 bytes): lower sims, the largest window or the slide length", n>>20)
		}
	}
	tests := testsFor(cfg.Signals, cfg.Windows)
	B, T, K := cfg.Sims, cfg.Horizon, len(tests)
	stats := make([]float32, B*T*K)
	workers := cfg.Workers
	if workers <= 0 {
		workers = min(2, runtime.GOMAXPROCS(0))
	}
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := newEngine(ref, tests, cfg.Seed)
			st := newNullStream(ref, cfg.Null, cfg.SlideCells)
			for b := range next {
				e.reset()
				st.reset(newRand(cfg.Seed, uint64(b)+1000))
				row := stats[b*T*K : (b+1)*T*K]
				for t := range T {
					// One reference row gives score, features and focus
					// together, keeping their dependence (a blurred
					// slide's cells are also scored differently).
					idx, score, focus := st.next()
					var phi []float64
					if e.useMMD {
						phi = ref.phi[idx*e.rffDim : (idx+1)*e.rffDim]
					}
					e.observe(score, focus, phi)
					for k, v := range e.stats {
						row[t*K+k] = float32(v)
					}
				}
			}
		}()
	}
	var err error
feed:
	for b := range B {
		select {
		case next <- b:
		case <-ctx.Done():
			err = ctx.Err()
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err != nil {
		return nil, fmt.Errorf("calibrate: %w", err)
	}
	c := &Calibration{
		ERT: cfg.ERT, WarnERT: cfg.WarnERT, Null: cfg.Null, Sims: B, Horizon: T, Seed: cfg.Seed,
		Weights: cfg.Signals, Tests: tests, Blocks: blockStarts(cfg.Windows, T), SlideCells: cfg.SlideCells,
	}
	c.Start = make([]int, K)
	for i, ts := range tests {
		c.Start[i] = blockIndex(c.Blocks, minFill(ts.Window))
	}
	var total float64
	for _, w := range cfg.Signals {
		total += w
	}
	weights := make([]float64, K)
	for i, ts := range tests {
		weights[i] = cfg.Signals[ts.Signal] / total / float64(len(cfg.Windows))
	}
	c.Warn = thresholds(stats, B, T, K, c.Blocks, weights, 1/float64(cfg.WarnERT))
	c.Alarm = thresholds(stats, B, T, K, c.Blocks, weights, 1/float64(cfg.ERT))
	return c, nil
}

// blockIndex returns the block containing step t (1-based).
func blockIndex(blocks []int, t int) int {
	i, found := slices.BinarySearch(blocks, t)
	if found {
		return i
	}
	return i - 1
}

// thresholds runs the sequential calibration of one tier. Block by block,
// among the simulated streams that have not alarmed yet, each test i gets the
// (1 - lambda*w_i) quantile of its statistics in the block as threshold, and
// lambda is chosen so that the rate of first alarms per surviving step is
// beta. Streams that alarm drop out, which is what makes later thresholds
// conditional on no earlier alarm.
func thresholds(stats []float32, B, T, K int, blocks []int, weights []float64, beta float64) [][]float64 {
	th := make([][]float64, K)
	for i := range th {
		th[i] = make([]float64, len(blocks))
	}
	alive := make([]bool, B)
	for i := range alive {
		alive[i] = true
	}
	sorted := make([][]float32, K)
	h := make([]float32, K)
	for bi, start := range blocks {
		t0 := start - 1
		t1 := T
		if bi+1 < len(blocks) {
			t1 = blocks[bi+1] - 1
		}
		for k := range K {
			sorted[k] = sorted[k][:0]
			for b := range B {
				if !alive[b] {
					continue
				}
				for t := t0; t < t1; t++ {
					if v := stats[(b*T+t)*K+k]; !isNaN32(v) {
						sorted[k] = append(sorted[k], v)
					}
				}
			}
			slices.Sort(sorted[k])
		}
		set := func(lambda float64) {
			for k := range K {
				s := sorted[k]
				if len(s) == 0 {
					h[k] = float32(math.Inf(1))
					continue
				}
				j := int(lambda * weights[k] * float64(len(s)))
				h[k] = s[len(s)-1-min(j, len(s)-1)]
			}
		}
		// rate returns first alarms per surviving step at the current h.
		rate := func(mark bool) float64 {
			var alarms, steps int
			for b := range B {
				if !alive[b] {
					continue
				}
			scan:
				for t := t0; t < t1; t++ {
					steps++
					row := stats[(b*T+t)*K : (b*T+t+1)*K]
					for k, v := range row {
						if v > h[k] { // NaN compares false: inactive tests never alarm
							alarms++
							if mark {
								alive[b] = false
							}
							break scan
						}
					}
				}
			}
			if steps == 0 {
				return 0
			}
			return float64(alarms) / float64(steps)
		}
		lo, hi := -30.0, 10.0 // log lambda
		best, bestErr := lo, math.Inf(1)
		for range 50 {
			mid := (lo + hi) / 2
			set(math.Exp(mid))
			r := rate(false)
			if e := math.Abs(r - beta); e < bestErr {
				best, bestErr = mid, e
			}
			if r > beta {
				hi = mid
			} else {
				lo = mid
			}
		}
		set(math.Exp(best))
		rate(true)
		for k := range K {
			v := float64(h[k])
			if math.IsInf(v, 0) {
				v = 0 // test inactive in this block; Calibration.Start says so
			}
			th[k][bi] = v
		}
	}
	return th
}

func isNaN32(v float32) bool { return v != v }

// nullStream draws drift-free reference rows.
type nullStream struct {
	ref  *reference
	null string
	r    interface {
		IntN(int) int
		Float64() float64
	}
	urn []int32
	cum []float64 // cumulative slide weights of this stream (slide-level null)

	// NullSlides: the urn over slides, the current slide's urn over its
	// rows (in urn), the cells left on it and the slide length range.
	slideUrn   []int32
	slide      int32
	left       int
	slideCells [2]int
}

func newNullStream(ref *reference, null string, slideCells [2]int) *nullStream {
	return &nullStream{ref: ref, null: null, slideCells: slideCells}
}

// checkSlideReference says whether ref can carry the slide null model.
func checkSlideReference(ref *reference) error {
	n, small := len(ref.slideRows), 0
	for _, rows := range ref.slideRows {
		if len(rows) < MinSlideRows {
			small++
		}
	}
	if n-small < MinSlides {
		return fmt.Errorf("%w: null %s: the reference has %d slides with at least %d cells (%d smaller ones), want at least %d: build the baseline from whole slides (labels.csv slide column, more cells per slide)",
			ErrTooFewSlides, NullSlides, n-small, MinSlideRows, small, MinSlides)
	}
	return nil
}

func (s *nullStream) reset(r interface {
	IntN(int) int
	Float64() float64
}) {
	s.r = r
	switch {
	case s.null == NullSlides:
		s.slideUrn = s.slideUrn[:0]
		for k, rows := range s.ref.slideRows {
			if len(rows) >= MinSlideRows {
				s.slideUrn = append(s.slideUrn, int32(k))
			}
		}
		s.left = 0
		return
	case s.null == NullExchangeable && len(s.ref.slideRows) > 1:
		// Bayesian bootstrap over slides: this stream's distribution is the
		// reference slides reweighted by Dirichlet(1, ..., 1) weights.
		s.cum = s.cum[:0]
		var t float64
		for range s.ref.slideRows {
			t += -math.Log(1 - r.Float64())
			s.cum = append(s.cum, t)
		}
		return
	}
	s.urn = s.urn[:0]
	for i := range s.ref.scores {
		s.urn = append(s.urn, int32(i))
	}
}

// nextSlide starts a new simulated slide: a reference slide drawn
// uniformly, and its length (the reference slide's own unless SlideCells
// says otherwise).
func (s *nullStream) nextSlide() {
	s.slide = s.slideUrn[s.r.IntN(len(s.slideUrn))]
	s.slideUrn = append(s.slideUrn, s.slide)
	s.urn = append(s.urn[:0], s.ref.slideRows[s.slide]...)
	s.left = len(s.urn)
	if lo, hi := s.slideCells[0], s.slideCells[1]; hi > 0 {
		s.left = lo + s.r.IntN(hi-lo+1)
	}
}

// next returns the drawn reference row, the stream's score and (0 without
// a focus reference) its focus.
func (s *nullStream) next() (int, float64, float64) {
	if s.null == NullBootstrap {
		i := s.r.IntN(len(s.ref.scores))
		var f float64
		if s.ref.focus != nil {
			f = s.ref.focus[i]
		}
		return i, s.ref.scores[i], f
	}
	var i int
	switch {
	case s.null == NullSlides:
		if s.left == 0 {
			s.nextSlide()
		}
		s.left--
		if len(s.urn) == 0 { // a simulated slide longer than the reference slide
			s.urn = append(s.urn, s.ref.slideRows[s.slide]...)
		}
		// The slide's own cells in random order, without replacement: a
		// window within one slide then varies as a real slide's does.
		// Drawing with replacement (or from a Pólya urn) adds the cells'
		// sampling noise a second time; measured, it made the positive-rate
		// and embedding tests' run lengths twice the ERT.
		j := s.r.IntN(len(s.urn))
		i = int(s.urn[j])
		s.urn[j] = s.urn[len(s.urn)-1]
		s.urn = s.urn[:len(s.urn)-1]
	case s.cum != nil && len(s.ref.slideRows) > 1:
		k, _ := slices.BinarySearch(s.cum, s.r.Float64()*s.cum[len(s.cum)-1])
		rows := s.ref.slideRows[min(k, len(s.cum)-1)]
		i = int(rows[s.r.IntN(len(rows))])
	default:
		i = int(s.urn[s.r.IntN(len(s.urn))])
		s.urn = append(s.urn, int32(i))
	}
	score := s.jitter(s.ref.jitLo[i], s.ref.jitHi[i], s.ref.scores[i])
	var f float64
	if s.ref.focus != nil {
		f = s.jitter(s.ref.focusLo[i], s.ref.focusHi[i], s.ref.focus[i])
	}
	return i, score, f
}

// jitter draws a new value in the open gap (lo, hi) around the reference
// value v, or returns v when it is an atom (lo == hi).
func (s *nullStream) jitter(lo, hi, v float64) float64 {
	if lo == hi {
		return lo
	}
	for {
		// Open interval: the new value must not tie a reference value.
		x := lo + s.r.Float64()*(hi-lo)
		if x != lo && x != hi && x != v {
			return x
		}
	}
}
