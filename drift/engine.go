package drift

import (
	"math"
	"slices"
)

// Signal names, as they appear in events and in the calibration.
const (
	SignalScores    = "scores_cvm"    // Cramér-von Mises on the score distribution
	SignalRate      = "positive_rate" // randomised binomial test on the predicted-positive rate
	SignalEmbedding = "embedding_mmd" // MMD (random Fourier features) on projected embeddings
	SignalFocus     = "focus_cvm"     // Cramér-von Mises on the per-cell focus (sharpness) distribution
)

// signalOrder is the canonical order of the sequential signals.
var signalOrder = [...]string{SignalScores, SignalRate, SignalEmbedding, SignalFocus}

// TestSpec is one sequential test: a signal on one window size.
type TestSpec struct {
	Signal string `json:"signal"`
	Window int    `json:"window"`
}

// minFill is the number of scores a window needs before it is tested: tiny
// windows only add noise that the thresholds would have to absorb.
func minFill(w int) int { return min(w, max(10, w/5)) }

// reference is what the detectors compare against, derived from a Baseline.
type reference struct {
	scores    []float64
	threshold float64
	p0        float64 // positive rate of the reference, shrunk away from 0 and 1
	cvm       *cvmRef
	emb       *Embedding
	phi       []float64 // len(scores) x emb.RFFDim, feature maps of the reference rows
	mu        []float64 // mean feature map
	jitLo     []float64 // for the exchangeable null: open interval around an untied reference score
	jitHi     []float64
	slideRows [][]int32 // reference rows per slide, when slides are known

	// focus, when not nil, holds the reference rows' focus values (same
	// rows as scores), with their Cramér-von Mises reference and the gaps
	// the exchangeable null draws new values from.
	focus            []float64
	focusCvM         *cvmRef
	focusLo, focusHi []float64
}

func newReference(scores []float64, threshold float64, emb *Embedding, z [][]float32, focus []float64) *reference {
	r := &reference{scores: scores, threshold: threshold, cvm: newCvMRef(scores), emb: emb}
	var pos int
	for _, s := range scores {
		if s >= threshold {
			pos++
		}
	}
	r.p0 = (float64(pos) + 0.5) / (float64(len(scores)) + 1)
	r.jitLo, r.jitHi = gaps(scores, r.cvm)
	if focus != nil {
		r.focus = focus
		r.focusCvM = newCvMRef(focus)
		r.focusLo, r.focusHi = gaps(focus, r.focusCvM)
	}
	if emb != nil && len(z) == len(scores) {
		d := emb.RFFDim
		r.phi = make([]float64, len(scores)*d)
		r.mu = make([]float64, d)
		for i := range scores {
			p := r.phi[i*d : (i+1)*d]
			emb.featureMap(z[i], p)
			for j, v := range p {
				r.mu[j] += v
			}
		}
		for j := range r.mu {
			r.mu[j] /= float64(len(scores))
		}
	}
	return r
}

// gaps returns, for each reference value, the open interval a new value
// from the same continuous distribution falls in (between its neighbours
// among the distinct values), or the value itself when it is an atom
// (several reference rows share it, as saturated scores do): new data hits
// atoms exactly.
func gaps(values []float64, c *cvmRef) (lo, hi []float64) {
	lo, hi = make([]float64, len(values)), make([]float64, len(values))
	vals := c.vals
	for i, s := range values {
		cell, _ := c.locate(s)
		k := (cell - 1) / 2
		if c.cnt[k] > 1 {
			lo[i], hi[i] = s, s
			continue
		}
		l, h := s, s
		if k > 0 {
			l = vals[k-1]
		} else if len(vals) > 1 {
			l = s - (vals[1] - s)
		}
		if k+1 < len(vals) {
			h = vals[k+1]
		} else if len(vals) > 1 {
			h = s + (s - vals[k-1])
		}
		lo[i], hi[i] = l, h
	}
	return lo, hi
}

// engine runs the tests over a stream of scores. The calibration simulates
// through the same engine as the live monitor, so the thresholds fit the
// statistics exactly as they are computed live.
type engine struct {
	ref     *reference
	tests   []TestSpec
	windows []int
	maxW    int
	seed    uint64
	useCvM  bool
	useRate bool
	useMMD  bool
	useFoc  bool
	rffDim  int

	t         int64 // scores seen since reset
	ringScore []float64
	ringCell  []int32
	ringTwoR  []int64
	ringPhi   []float64 // maxW x rffDim
	ringFoc   []float64
	ringFCell []int32
	ringFTwoR []int64

	cvm     []*cvmWindow
	cvmFoc  []*cvmWindow
	count   []int64     // scores in each window
	pos     []int64     // positives per window
	phiSum  [][]float64 // per window
	stats   []float64   // per test, NaN while a window is below its minimum fill
	scratch []float64
}

func newEngine(ref *reference, tests []TestSpec, seed uint64) *engine {
	e := &engine{ref: ref, tests: tests, seed: seed}
	for _, ts := range tests {
		if !slices.Contains(e.windows, ts.Window) {
			e.windows = append(e.windows, ts.Window)
		}
		switch ts.Signal {
		case SignalScores:
			e.useCvM = true
		case SignalRate:
			e.useRate = true
		case SignalEmbedding:
			e.useMMD = true
		case SignalFocus:
			e.useFoc = true
		}
	}
	slices.Sort(e.windows)
	e.maxW = e.windows[len(e.windows)-1]
	e.ringScore = make([]float64, e.maxW)
	e.ringCell = make([]int32, e.maxW)
	e.ringTwoR = make([]int64, e.maxW)
	e.pos = make([]int64, len(e.windows))
	e.count = make([]int64, len(e.windows))
	if e.useCvM {
		for range e.windows {
			e.cvm = append(e.cvm, newCvMWindow(ref.cvm))
		}
	}
	if e.useMMD {
		e.rffDim = ref.emb.RFFDim
		e.ringPhi = make([]float64, e.maxW*e.rffDim)
		for range e.windows {
			e.phiSum = append(e.phiSum, make([]float64, e.rffDim))
		}
		e.scratch = make([]float64, e.rffDim)
	}
	if e.useFoc {
		e.ringFoc = make([]float64, e.maxW)
		e.ringFCell = make([]int32, e.maxW)
		e.ringFTwoR = make([]int64, e.maxW)
		for range e.windows {
			e.cvmFoc = append(e.cvmFoc, newCvMWindow(ref.focusCvM))
		}
	}
	e.stats = make([]float64, len(tests))
	return e
}

func (e *engine) reset() {
	e.t = 0
	for _, w := range e.cvm {
		w.reset()
	}
	for _, w := range e.cvmFoc {
		w.reset()
	}
	clear(e.pos)
	clear(e.count)
	for _, s := range e.phiSum {
		clear(s)
	}
}

func (e *engine) positive(s float64) bool { return s >= e.ref.threshold }

// observe adds one score (and, when the embedding signal is on, its feature
// map phi; when the focus signal is on, its focus) and recomputes every test
// statistic.
func (e *engine) observe(score, focus float64, phi []float64) {
	// Expire first: the new score's ring slot may hold the oldest score of
	// the largest window.
	for wi, w := range e.windows {
		if e.count[wi] < int64(w) {
			continue
		}
		e.count[wi]--
		old := int((e.t - int64(w)) % int64(e.maxW))
		os := e.ringScore[old]
		if e.useCvM {
			e.cvm[wi].update(os, int(e.ringCell[old]), e.ringTwoR[old], -1)
		}
		if e.useFoc {
			e.cvmFoc[wi].update(e.ringFoc[old], int(e.ringFCell[old]), e.ringFTwoR[old], -1)
		}
		if e.positive(os) {
			e.pos[wi]--
		}
		if e.useMMD {
			p := e.ringPhi[old*e.rffDim : (old+1)*e.rffDim]
			for j, v := range p {
				e.phiSum[wi][j] -= v
			}
		}
	}
	slot := int(e.t % int64(e.maxW))
	cell, twoR := e.ref.cvm.locate(score)
	e.ringScore[slot], e.ringCell[slot], e.ringTwoR[slot] = score, int32(cell), twoR
	if e.useMMD {
		copy(e.ringPhi[slot*e.rffDim:(slot+1)*e.rffDim], phi)
	}
	var fCell int
	var fTwoR int64
	if e.useFoc {
		fCell, fTwoR = e.ref.focusCvM.locate(focus)
		e.ringFoc[slot], e.ringFCell[slot], e.ringFTwoR[slot] = focus, int32(fCell), fTwoR
	}
	isPos := e.positive(score)
	for wi := range e.windows {
		e.count[wi]++
		if e.useCvM {
			e.cvm[wi].update(score, cell, twoR, 1)
		}
		if e.useFoc {
			e.cvmFoc[wi].update(focus, fCell, fTwoR, 1)
		}
		if isPos {
			e.pos[wi]++
		}
		if e.useMMD {
			for j, v := range phi {
				e.phiSum[wi][j] += v
			}
		}
	}
	e.t++
	// Sums of floating-point feature maps drift under add/remove; rebuild
	// them from the ring once per largest window (amortised O(rffDim)).
	if e.useMMD && e.t%int64(e.maxW) == 0 {
		e.resum()
	}
	for i, ts := range e.tests {
		wi := slices.Index(e.windows, ts.Window)
		m := e.count[wi]
		if m < int64(minFill(ts.Window)) {
			e.stats[i] = math.NaN()
			continue
		}
		switch ts.Signal {
		case SignalScores:
			e.stats[i] = e.cvm[wi].stat()
		case SignalRate:
			e.stats[i] = e.rateStat(e.pos[wi], m, ts.Window)
		case SignalEmbedding:
			e.stats[i] = e.mmdStat(e.phiSum[wi], m)
		case SignalFocus:
			e.stats[i] = e.cvmFoc[wi].stat()
		}
	}
}

// rateStat is a two-sided binomial z statistic on the positive count, with
// the count spread uniformly over [k-1/2, k+1/2) by a counter-based uniform.
// The randomisation makes the statistic continuous, so that thresholds can
// meet a per-step false-alarm rate far below the lattice's granularity.
func (e *engine) rateStat(k, m int64, w int) float64 {
	u := hashUniform(e.seed, uint64(e.t), uint64(w))
	p := e.ref.p0
	return math.Abs(float64(k)+u-0.5-float64(m)*p) / math.Sqrt(float64(m)*p*(1-p))
}

// mmdStat is m * ||mean feature map of the window - reference mean||^2.
func (e *engine) mmdStat(sum []float64, m int64) float64 {
	var s float64
	for j, v := range sum {
		d := v/float64(m) - e.ref.mu[j]
		s += d * d
	}
	return float64(m) * s
}

func (e *engine) resum() {
	for wi := range e.windows {
		s := e.phiSum[wi]
		clear(s)
		for i := e.t - e.count[wi]; i < e.t; i++ {
			slot := int(i % int64(e.maxW))
			for j, v := range e.ringPhi[slot*e.rffDim : (slot+1)*e.rffDim] {
				s[j] += v
			}
		}
	}
}

// validFocus reports whether f can be a focus value: finite and >= 0 (NaN
// fails the comparison).
func validFocus(f float64) bool { return f >= 0 && !math.IsInf(f, 1) }
