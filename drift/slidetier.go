package drift

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// The between-slide tier reads one summary per completed slide and tests
// the sequence of slides, not of cells: each slide's positive rate, mean
// score, mean log focus and mean projected embedding is standardised
// against the spread between the reference slides (plus the cell sampling
// noise of a slide of its size), and a CUSUM per signal accumulates the
// standardised values across slides. A sustained shift of every slide
// adds up within a few slides; one odd slide (a heavily infected one, a
// badly stained one) adds at most a clipped amount and cannot raise the
// alarm alone. The CUSUM limits are calibrated by simulating sequences of
// reference slides (each standardised leaving itself out, so that a
// reference slide counts as a new slide) to an expected run time stated in
// slides.

// Slide-tier signals.
const (
	SlideSignalRate      = "slide_positive_rate"
	SlideSignalScore     = "slide_mean_score"
	SlideSignalFocus     = "slide_focus"
	SlideSignalEmbedding = "slide_embedding"
)

// SlideSummary is what the between-slide tier reads of one completed slide.
type SlideSummary struct {
	Cells int
	// Per-signal means over the slide's cells and their within-slide
	// variances (the positive indicator, the score, log(1 + focus)).
	Rate, Score, Focus          float64
	RateVar, ScoreVar, FocusVar float64
	HasFocus                    bool
	// Embedding is the mean projected embedding (nil without), EmbVar its
	// within-slide variance per dimension.
	Embedding, EmbVar []float64
}

// SummariseSlide summarises a slide's cells: scores, and when known their
// focus values and projected embeddings (Embedding.Project).
func (b *Baseline) SummariseSlide(scores, focus []float64, z [][]float32) SlideSummary {
	s := SlideSummary{Cells: len(scores)}
	n := float64(len(scores))
	if n == 0 {
		return s
	}
	mv := func(get func(i int) float64) (float64, float64) {
		var sum, sq float64
		for i := range scores {
			v := get(i)
			sum += v
			sq += v * v
		}
		m := sum / n
		return m, math.Max(0, sq/n-m*m)
	}
	s.Rate, s.RateVar = mv(func(i int) float64 {
		if scores[i] >= b.Threshold {
			return 1
		}
		return 0
	})
	s.Score, s.ScoreVar = mv(func(i int) float64 { return scores[i] })
	if len(focus) == len(scores) {
		s.HasFocus = true
		s.Focus, s.FocusVar = mv(func(i int) float64 { return math.Log1p(focus[i]) })
	}
	if len(z) == len(scores) && len(z[0]) > 0 {
		d := len(z[0])
		s.Embedding, s.EmbVar = make([]float64, d), make([]float64, d)
		for j := range d {
			s.Embedding[j], s.EmbVar[j] = mv(func(i int) float64 { return float64(z[i][j]) })
		}
	}
	return s
}

// SlideTierConfig says how the between-slide tier is calibrated.
type SlideTierConfig struct {
	ERT  int     // expected run time without drift, in slides (default 200)
	K    float64 // CUSUM allowance per slide, in standard units (default 0.5)
	Clip float64 // a slide's standardised value is clipped to +-Clip (default 3)
	Sims int     // simulated slide sequences per limit (default 2000)
	Seed uint64
}

func (c SlideTierConfig) withDefaults() (SlideTierConfig, error) {
	if c.ERT == 0 {
		c.ERT = 200
	}
	if c.K == 0 {
		c.K = 0.5
	}
	if c.Clip == 0 {
		c.Clip = 3
	}
	if c.Sims == 0 {
		c.Sims = 2000
	}
	if c.ERT < 5 || !(c.K > 0) || !(c.Clip > c.K) || c.Sims < 100 {
		return c, fmt.Errorf("slide tier: ert %d, k %v, clip %v, sims %d: want ert >= 5, 0 < k < clip, sims >= 100", c.ERT, c.K, c.Clip, c.Sims)
	}
	return c, nil
}

// slideRef is one signal's between-slide reference: the mean over slides,
// the between-slide variance of the slides' true values and the pooled
// within-slide variance of a cell's value.
type slideRef struct{ mu, between float64 }

func (r slideRef) z(mean, within float64, cells int) float64 {
	v := r.between + within/float64(max(cells, 1))
	if !(v > 0) {
		return 0
	}
	return (mean - r.mu) / math.Sqrt(v)
}

func newSlideRef(means, withins []float64, cells []int) slideRef {
	var mu, sw float64
	for i := range means {
		mu += means[i]
		sw += withins[i] / float64(max(cells[i], 1))
	}
	n := float64(len(means))
	mu /= n
	var v float64
	for _, m := range means {
		v += (m - mu) * (m - mu)
	}
	if n > 1 {
		v /= n - 1
	}
	return slideRef{mu: mu, between: math.Max(0, v-sw/n)}
}

// SlideTier is the calibrated between-slide tier of a baseline.
type SlideTier struct {
	cfg     SlideTierConfig
	signals []string
	ref     map[string]slideRef
	emb     []slideRef
	limit   map[string]float64 // CUSUM limit per signal
}

// NewSlideTier builds the tier from the baseline's reference slides (at
// least MinSlides slides of MinSlideRows cells) and calibrates its limits.
func NewSlideTier(b *Baseline, cfg SlideTierConfig) (*SlideTier, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	b.prepare()
	var sums []SlideSummary
	for _, rows := range b.ref.slideRows {
		if len(rows) < MinSlideRows {
			continue
		}
		sc, fo := make([]float64, len(rows)), []float64(nil)
		var z [][]float32
		if len(b.Focus) == len(b.Scores) {
			fo = make([]float64, len(rows))
		}
		if len(b.Projected) == len(b.Scores) {
			z = make([][]float32, len(rows))
		}
		for k, i := range rows {
			sc[k] = b.Scores[i]
			if fo != nil {
				fo[k] = b.Focus[i]
			}
			if z != nil {
				z[k] = b.Projected[i]
			}
		}
		sums = append(sums, b.SummariseSlide(sc, fo, z))
	}
	if len(sums) < MinSlides {
		return nil, fmt.Errorf("%w: slide tier: %d reference slides with at least %d cells, want %d", ErrTooFewSlides, len(sums), MinSlideRows, MinSlides)
	}
	t := &SlideTier{cfg: cfg, ref: map[string]slideRef{}, limit: map[string]float64{}}
	t.signals = []string{SlideSignalRate, SlideSignalScore}
	if sums[0].HasFocus {
		t.signals = append(t.signals, SlideSignalFocus)
	}
	if sums[0].Embedding != nil {
		t.signals = append(t.signals, SlideSignalEmbedding)
	}
	// Leave-one-out standardised values of the reference slides: each
	// stands for a new slide in the calibration.
	loo := make([]map[string]float64, len(sums))
	for i := range sums {
		others := slices.Delete(slices.Clone(sums), i, i+1)
		tt := &SlideTier{signals: t.signals, ref: map[string]slideRef{}}
		tt.fit(others)
		loo[i] = tt.Z(sums[i])
	}
	t.fit(sums)
	target := float64(cfg.ERT * len(t.signals)) // the false-alarm rate split evenly
	for _, sig := range t.signals {
		vals := make([]float64, len(loo))
		for i := range loo {
			vals[i] = loo[i][sig]
		}
		t.limit[sig] = calibrateCUSUM(vals, sig == SlideSignalEmbedding, cfg, target)
	}
	return t, nil
}

func (t *SlideTier) fit(sums []SlideSummary) {
	cells := make([]int, len(sums))
	col := func(get func(s SlideSummary) (float64, float64)) ([]float64, []float64) {
		m, w := make([]float64, len(sums)), make([]float64, len(sums))
		for i, s := range sums {
			m[i], w[i] = get(s)
		}
		return m, w
	}
	for i, s := range sums {
		cells[i] = s.Cells
	}
	m, w := col(func(s SlideSummary) (float64, float64) { return s.Rate, s.RateVar })
	t.ref[SlideSignalRate] = newSlideRef(m, w, cells)
	m, w = col(func(s SlideSummary) (float64, float64) { return s.Score, s.ScoreVar })
	t.ref[SlideSignalScore] = newSlideRef(m, w, cells)
	if slices.Contains(t.signals, SlideSignalFocus) {
		m, w = col(func(s SlideSummary) (float64, float64) { return s.Focus, s.FocusVar })
		t.ref[SlideSignalFocus] = newSlideRef(m, w, cells)
	}
	if slices.Contains(t.signals, SlideSignalEmbedding) {
		t.emb = make([]slideRef, len(sums[0].Embedding))
		for j := range t.emb {
			m, w = col(func(s SlideSummary) (float64, float64) { return s.Embedding[j], s.EmbVar[j] })
			t.emb[j] = newSlideRef(m, w, cells)
		}
	}
}

// Signals lists the tier's signals.
func (t *SlideTier) Signals() []string { return slices.Clone(t.signals) }

// Limit is a signal's CUSUM limit.
func (t *SlideTier) Limit(signal string) float64 { return t.limit[signal] }

// Z standardises a slide's summary per signal. The embedding's value is the
// Wilson-Hilferty normal equivalent of its chi-square distance over the
// dimensions, so that all signals are on one scale.
func (t *SlideTier) Z(s SlideSummary) map[string]float64 {
	out := map[string]float64{
		SlideSignalRate:  t.ref[SlideSignalRate].z(s.Rate, s.RateVar, s.Cells),
		SlideSignalScore: t.ref[SlideSignalScore].z(s.Score, s.ScoreVar, s.Cells),
	}
	if slices.Contains(t.signals, SlideSignalFocus) && s.HasFocus {
		out[SlideSignalFocus] = t.ref[SlideSignalFocus].z(s.Focus, s.FocusVar, s.Cells)
	}
	if slices.Contains(t.signals, SlideSignalEmbedding) && len(s.Embedding) == len(t.emb) {
		var chi float64
		for j, r := range t.emb {
			z := r.z(s.Embedding[j], s.EmbVar[j], s.Cells)
			chi += z * z
		}
		d := float64(len(t.emb))
		c := 2 / (9 * d)
		out[SlideSignalEmbedding] = (math.Cbrt(chi/d) - (1 - c)) / math.Sqrt(c)
	}
	return out
}

// cusum is one signal's two CUSUM sums.
type cusum struct{ up, down float64 }

func (c *cusum) add(z, k, clip float64, oneSided bool) float64 {
	z = math.Max(-clip, math.Min(clip, z))
	c.up = math.Max(0, c.up+z-k)
	if oneSided {
		return c.up
	}
	c.down = math.Max(0, c.down-z-k)
	return math.Max(c.up, c.down)
}

// calibrateCUSUM finds the limit whose mean run length over sequences of
// values drawn from vals is target slides (bisection; runs cut at 10 x
// target count as that long, which biases the limit slightly low).
func calibrateCUSUM(vals []float64, oneSided bool, cfg SlideTierConfig, target float64) float64 {
	maxLen := int(10 * target)
	mrl := func(h float64) float64 {
		r := rand.New(rand.NewPCG(cfg.Seed, 0x51de))
		var total float64
		for range cfg.Sims {
			var c cusum
			n := maxLen
			for i := 1; i <= maxLen; i++ {
				if c.add(vals[r.IntN(len(vals))], cfg.K, cfg.Clip, oneSided) > h {
					n = i
					break
				}
			}
			total += float64(n)
		}
		return total / float64(cfg.Sims)
	}
	lo, hi := 0.0, 1.0
	for mrl(hi) < target && hi < 1e4 {
		lo, hi = hi, 2*hi
	}
	for range 30 {
		mid := (lo + hi) / 2
		if mrl(mid) < target {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi
}

// SlideEvent is an alarm of the between-slide tier.
type SlideEvent struct {
	Signal    string
	Slide     int // slides since reset when it fired (1-based)
	Statistic float64
	Limit     float64
	Z         float64 // the standardised value of the slide that tipped it
}

// SlideMonitor runs the tier over completed slides.
type SlideMonitor struct {
	t      *SlideTier
	sums   map[string]*cusum
	slides int
	fired  map[string]bool
}

// NewSlideMonitor starts a monitor of the tier.
func NewSlideMonitor(t *SlideTier) *SlideMonitor {
	m := &SlideMonitor{t: t}
	m.Reset()
	return m
}

// Reset restarts detection.
func (m *SlideMonitor) Reset() {
	m.sums, m.fired, m.slides = map[string]*cusum{}, map[string]bool{}, 0
	for _, s := range m.t.signals {
		m.sums[s] = &cusum{}
	}
}

// Observe adds a completed slide; each signal alarms once until Reset.
func (m *SlideMonitor) Observe(s SlideSummary) []SlideEvent {
	m.slides++
	var out []SlideEvent
	for sig, z := range m.t.Z(s) {
		v := m.sums[sig].add(z, m.t.cfg.K, m.t.cfg.Clip, sig == SlideSignalEmbedding)
		if v > m.t.limit[sig] && !m.fired[sig] {
			m.fired[sig] = true
			out = append(out, SlideEvent{Signal: sig, Slide: m.slides, Statistic: v, Limit: m.t.limit[sig], Z: z})
		}
	}
	slices.SortFunc(out, func(a, b SlideEvent) int { return cmpString(a.Signal, b.Signal) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// SlideSummaries summarises a pool's slides (rows grouped by slide id, in
// order of first appearance), projecting features when the pool has them
// and the baseline an embedding.
func (b *Baseline) SlideSummaries(rows *EvalRows) ([]SlideSummary, error) {
	if len(rows.Slides) != len(rows.Scores) {
		return nil, fmt.Errorf("slide summaries: the pool has no slide ids (a slide column is needed)")
	}
	so, err := NewSlideOrder(rows.Slides)
	if err != nil {
		return nil, err
	}
	var out []SlideSummary
	for _, idx := range so.slides {
		sc := make([]float64, len(idx))
		var fo []float64
		var z [][]float32
		if len(rows.Focus) == len(rows.Scores) {
			fo = make([]float64, len(idx))
		}
		if b.Embedding != nil && len(rows.Features) == len(rows.Scores) {
			z = make([][]float32, len(idx))
		}
		for k, i := range idx {
			sc[k] = rows.Scores[i]
			if fo != nil {
				fo[k] = rows.Focus[i]
			}
			if z != nil {
				p, err := b.Embedding.Project(rows.Features[i])
				if err != nil {
					return nil, fmt.Errorf("row %d: %w", i, err)
				}
				z[k] = p
			}
		}
		out = append(out, b.SummariseSlide(sc, fo, z))
	}
	return out, nil
}

// SlideTierResult is the between-slide tier's drift-free run length and
// its detection of a shift, in slides.
type SlideTierResult struct {
	Runs       int            `json:"runs"`
	MeanRun    float64        `json:"mean_run_slides"` // drift-free
	Censored   int            `json:"censored"`
	FalseEarly int            `json:"false_before_onset"` // shift runs whose alarm came before the onset
	Detected   int            `json:"detected"`
	Within     int            `json:"within"` // detected within the target number of slides
	MeanDelay  float64        `json:"mean_delay_slides"`
	BySignal   map[string]int `json:"by_signal"`
}

// EvalSlideTier measures the tier: runs drift-free sequences of null
// slides (drawn with replacement) to their first alarm, capped at 10 x ERT;
// with shift slides, runs onset null slides, then shift slides until an
// alarm or after slides, and counts detections within the within slides
// of the onset. A shift of one slide among nominal ones is after = 1.
func (t *SlideTier) EvalSlideTier(null, shift []SlideSummary, runs, onset, after, within int, seed uint64) SlideTierResult {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	res := SlideTierResult{Runs: runs, BySignal: map[string]int{}}
	m := NewSlideMonitor(t)
	if shift == nil {
		var total float64
		cap := 10 * t.cfg.ERT
		for range runs {
			m.Reset()
			n := cap
			for i := 1; i <= cap; i++ {
				if ev := m.Observe(null[r.IntN(len(null))]); len(ev) > 0 {
					n = i
					res.BySignal[ev[0].Signal]++
					break
				}
			}
			if n == cap {
				res.Censored++
			}
			total += float64(n)
		}
		res.MeanRun = total / float64(runs)
		return res
	}
	var delays float64
	for range runs {
		m.Reset()
		early := false
		for range onset {
			if len(m.Observe(null[r.IntN(len(null))])) > 0 {
				early = true
			}
		}
		if early {
			// As the cell-level evaluation does: a false alarm before the
			// onset is counted, and detection starts again from there.
			res.FalseEarly++
			m.Reset()
		}
		for i := 1; i <= after; i++ {
			s := shift[r.IntN(len(shift))]
			if ev := m.Observe(s); len(ev) > 0 {
				res.Detected++
				res.BySignal[ev[0].Signal]++
				delays += float64(i)
				if i <= within {
					res.Within++
				}
				break
			}
		}
	}
	if res.Detected > 0 {
		res.MeanDelay = delays / float64(res.Detected)
	}
	return res
}
