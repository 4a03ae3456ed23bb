package drift

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"gonum.org/v1/gonum/mat"
	"gonum.org/v1/gonum/stat/distuv"
)

// The per-slide quality gate asks of each completed slide whether it looks
// like the reference slides at all: its cells' mean stain colour,
// brightness, sharpness and framing against the spread between the
// reference slides. A slide outside that spread is an operator's matter
// (restain, refocus, check the lamp) and is flagged as such, by name; it
// says nothing about the model having drifted, which only a sustained
// change across slides shows (the between-slide tier).
//
// A check reads p statistics (or one weighted sum of them) and compares
// the slide's mean m over its n cells with the reference by the
// Mahalanobis distance d² = (m-mu)' (B + W/n)^-1 (m-mu): B is the
// covariance of the slides' true means (what differs between slides), W
// the pooled covariance of one cell within a slide (what n cells average
// out). B is estimated from the reference slides' means minus their own
// sampling noise. Under normal slide effects a new nominal slide's d²
// follows Hotelling's prediction distribution, p(S+1)(S-1)/(S(S-p))
// F(p, S-p) for S reference slides, which sets each check's limit at its
// share of the gate's false-flag rate (Bonferroni over the checks). How
// many reference slides the gate would flag leaving each out is kept as a
// check on that assumption.

// SlideQuality is the per-slide quality gate's reference.
type SlideQuality struct {
	// FalseFlag is the target share of nominal slides flagged by any
	// check.
	FalseFlag float64 `json:"false_flag"`
	// Slides and Cells count the reference; ReferenceFlagged is the share
	// of reference slides flagged when each is checked against the
	// others.
	Slides           int            `json:"slides"`
	Cells            int            `json:"cells"`
	ReferenceFlagged float64        `json:"reference_flagged"`
	Checks           []QualityCheck `json:"checks"`
}

// QualityCheck is one check of the gate.
type QualityCheck struct {
	// Name says what is checked: stain, brightness, sharpness or framing.
	Name string `json:"name"`
	// Stats names the appearance statistics read; with Weights, the check
	// reads the one value sum(Weights[i] * Stats[i]) instead.
	Stats   []string  `json:"stats"`
	Weights []float64 `json:"weights,omitempty"`
	// Log marks the statistics read as log(1 + value) (focus, whose
	// spread grows with its level).
	Log []bool `json:"log,omitempty"`
	// Mean, Between and Within (row-major, p x p) describe the reference
	// slides: the mean of their means, the covariance of their true means
	// and the pooled within-slide covariance of a cell.
	Mean    []float64 `json:"mean"`
	Between []float64 `json:"between"`
	Within  []float64 `json:"within"`
	// Limit is the squared distance above which a slide is flagged.
	Limit float64 `json:"limit"`
	// RefLo, RefHi are the lowest and highest reference slide means of a
	// one-value check (for the message).
	RefLo float64 `json:"ref_lo,omitempty"`
	RefHi float64 `json:"ref_hi,omitempty"`
}

// QualityCheckSpec says what a check reads (SlideQualityConfig.Checks).
type QualityCheckSpec struct {
	Name    string
	Stats   []string
	Weights []float64
	Log     []bool // per statistic: read as log(1 + value); nil: none
}

// DefaultQualityChecks are the checks on inference.AppearanceNames'
// statistics: stain colour (mean R, G, B and saturation of the cells'
// pixels; hue and intensity of the stain together with the lamp's colour),
// brightness (the mean of R, G and B), sharpness (defocus, read from focus
// and sharpness together: sensor noise raises both, defocus lowers focus
// less than sharpness, so that the pair tells a blurred slide from a
// noisy or a soft one where either alone does not) and framing (the share
// of a crop outside the cell: cell size and magnification).
var DefaultQualityChecks = []QualityCheckSpec{
	{Name: "stain", Stats: []string{"mean_r", "mean_g", "mean_b", "saturation"}},
	{Name: "brightness", Stats: []string{"mean_r", "mean_g", "mean_b"}, Weights: []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}},
	{Name: "sharpness", Stats: []string{"focus", "sharpness"}, Log: []bool{true, false}},
	{Name: "framing", Stats: []string{"background"}},
}

// SlideQualityConfig controls BuildSlideQuality. Zero values take the
// defaults.
type SlideQualityConfig struct {
	FalseFlag float64            // default 0.005
	Checks    []QualityCheckSpec // default DefaultQualityChecks; a check whose statistics are not all given is left out
}

// minQualitySlides is the fewest reference slides the gate is made from:
// the between-slide spread is estimated from the slides, not the cells.
const minQualitySlides = 20

// MinQualityCells is the fewest cells a slide needs for the gate to judge
// it (and a reference slide to count): below it the slide's means carry
// too much of its cells' own noise.
const MinQualityCells = 20

// ErrNoSlideQuality is returned by BuildSlideQuality when the reference
// cannot support the gate (too few slides, or no statistic a check needs).
var ErrNoSlideQuality = errors.New("no slide quality reference")

// BuildSlideQuality calibrates the gate on nominal cells: names the
// statistics (columns of stats, one row per cell), slides each cell's
// slide. Slides with fewer than 20 cells are left out; at least 20 must
// remain.
func BuildSlideQuality(names []string, stats [][]float64, slides []string, cfg SlideQualityConfig) (*SlideQuality, error) {
	if cfg.FalseFlag == 0 {
		cfg.FalseFlag = 0.005
	}
	if !(cfg.FalseFlag > 0 && cfg.FalseFlag < 0.5) {
		return nil, fmt.Errorf("slide quality: false flag rate %v: want 0 < rate < 0.5", cfg.FalseFlag)
	}
	if cfg.Checks == nil {
		cfg.Checks = DefaultQualityChecks
	}
	if len(stats) != len(slides) {
		return nil, fmt.Errorf("slide quality: %d rows of statistics for %d slide ids", len(stats), len(slides))
	}
	col := map[string]int{}
	for i, n := range names {
		col[n] = i
	}
	bySlide := map[string][]int{}
	for i, s := range slides {
		if len(stats[i]) != len(names) {
			return nil, fmt.Errorf("slide quality: row %d has %d statistics for %d names", i, len(stats[i]), len(names))
		}
		bySlide[s] = append(bySlide[s], i)
	}
	var groups [][]int
	for _, id := range sortedKeys(bySlide) {
		if rows := bySlide[id]; len(rows) >= MinQualityCells {
			groups = append(groups, rows)
		}
	}
	if len(groups) < minQualitySlides {
		return nil, fmt.Errorf("%w: %d slides of %d or more cells; the gate needs %d", ErrNoSlideQuality, len(groups), MinQualityCells, minQualitySlides)
	}
	q := &SlideQuality{FalseFlag: cfg.FalseFlag, Slides: len(groups)}
	for _, g := range groups {
		q.Cells += len(g)
	}
	var specs []QualityCheckSpec
	for _, sp := range cfg.Checks {
		ok := len(sp.Stats) > 0 && (sp.Weights == nil || len(sp.Weights) == len(sp.Stats)) && (sp.Log == nil || len(sp.Log) == len(sp.Stats))
		for _, n := range sp.Stats {
			_, has := col[n]
			ok = ok && has
		}
		if ok {
			specs = append(specs, sp)
		}
	}
	if len(specs) == 0 {
		return nil, fmt.Errorf("%w: none of the checks' statistics among %s", ErrNoSlideQuality, strings.Join(names, ", "))
	}
	alpha := cfg.FalseFlag / float64(len(specs))
	flagged := make([]bool, len(groups))
	for _, sp := range specs {
		// vals[g][c]: each cell's checked values, slide by slide.
		vals := make([][][]float64, len(groups))
		for gi, g := range groups {
			for _, i := range g {
				vals[gi] = append(vals[gi], checkValues(sp, col, stats[i]))
			}
		}
		c, err := fitQualityCheck(sp, vals, alpha)
		if err != nil {
			return nil, fmt.Errorf("slide quality: check %s: %w", sp.Name, err)
		}
		q.Checks = append(q.Checks, c)
		// Leave-one-out: each reference slide against the others.
		for gi := range groups {
			rest := slices.Concat(vals[:gi], vals[gi+1:])
			lc, err := fitQualityCheck(sp, rest, alpha)
			if err != nil {
				continue
			}
			if d2, _ := lc.distance(meanRows(vals[gi]), len(vals[gi])); d2 > lc.Limit {
				flagged[gi] = true
			}
		}
	}
	var nf int
	for _, f := range flagged {
		if f {
			nf++
		}
	}
	q.ReferenceFlagged = float64(nf) / float64(len(groups))
	return q, nil
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

func checkValues(sp QualityCheckSpec, col map[string]int, row []float64) []float64 {
	get := func(k int) float64 {
		v := row[col[sp.Stats[k]]]
		if sp.Log != nil && sp.Log[k] {
			return logStat(v)
		}
		return v
	}
	if sp.Weights != nil {
		var v float64
		for k := range sp.Stats {
			v += sp.Weights[k] * get(k)
		}
		return []float64{v}
	}
	out := make([]float64, len(sp.Stats))
	for k := range sp.Stats {
		out[k] = get(k)
	}
	return out
}

// logStat is a log-read statistic's value: log(1 + v), v clamped at 0.
func logStat(v float64) float64 { return math.Log1p(max(v, 0)) }

// logKey names the sum of a statistic's log values in SlideAppearance.
func logKey(name string) string { return "log1p:" + name }

func meanRows(rows [][]float64) []float64 {
	m := make([]float64, len(rows[0]))
	for _, r := range rows {
		for j, v := range r {
			m[j] += v
		}
	}
	for j := range m {
		m[j] /= float64(len(rows))
	}
	return m
}

// fitQualityCheck estimates the check's reference from slides' cell values.
func fitQualityCheck(sp QualityCheckSpec, slides [][][]float64, alpha float64) (QualityCheck, error) {
	p, s := len(slides[0][0]), len(slides)
	if s <= p+1 {
		return QualityCheck{}, fmt.Errorf("%d slides for %d statistics", s, p)
	}
	means := make([][]float64, s)
	within := make([]float64, p*p)
	var dof, cells float64
	for gi, rows := range slides {
		m := meanRows(rows)
		means[gi] = m
		for _, r := range rows {
			for a := range p {
				for b := range p {
					within[a*p+b] += (r[a] - m[a]) * (r[b] - m[b])
				}
			}
		}
		dof += float64(len(rows) - 1)
		cells += float64(len(rows))
	}
	for i := range within {
		within[i] /= dof
	}
	mu := meanRows(means)
	between := make([]float64, p*p)
	for _, m := range means {
		for a := range p {
			for b := range p {
				between[a*p+b] += (m[a] - mu[a]) * (m[b] - mu[b])
			}
		}
	}
	// Covariance of the slide means, less the part their own cells'
	// sampling adds (W/n at the mean slide size), kept positive
	// semi-definite.
	nbar := cells / float64(s)
	for i := range between {
		between[i] = between[i]/float64(s-1) - within[i]/nbar
	}
	between = clampPSD(between, p)
	c := QualityCheck{Name: sp.Name, Stats: slices.Clone(sp.Stats), Weights: slices.Clone(sp.Weights), Log: slices.Clone(sp.Log), Mean: mu, Between: between, Within: within}
	f := distuv.F{D1: float64(p), D2: float64(s - p)}
	c.Limit = float64(p) * float64(s+1) * float64(s-1) / (float64(s) * float64(s-p)) * f.Quantile(1-alpha)
	if p == 1 {
		c.RefLo, c.RefHi = math.Inf(1), math.Inf(-1)
		for _, m := range means {
			c.RefLo, c.RefHi = min(c.RefLo, m[0]), max(c.RefHi, m[0])
		}
	}
	return c, nil
}

// clampPSD returns the symmetric p x p matrix a with its eigenvalues
// raised to at least a small fraction of the largest (and to zero), so
// that B + W/n stays invertible.
func clampPSD(a []float64, p int) []float64 {
	sym := mat.NewSymDense(p, nil)
	for i := range p {
		for j := i; j < p; j++ {
			sym.SetSym(i, j, (a[i*p+j]+a[j*p+i])/2)
		}
	}
	var eig mat.EigenSym
	if !eig.Factorize(sym, true) {
		return make([]float64, p*p)
	}
	vals := eig.Values(nil)
	var v mat.Dense
	eig.VectorsTo(&v)
	top := slices.Max(vals)
	for i := range vals {
		vals[i] = max(vals[i], 1e-9*max(top, 0))
	}
	out := make([]float64, p*p)
	for i := range p {
		for j := range p {
			var x float64
			for k := range p {
				x += v.At(i, k) * vals[k] * v.At(j, k)
			}
			out[i*p+j] = x
		}
	}
	return out
}

// distance is the squared Mahalanobis distance of a slide mean over n
// cells, and the standardised difference of each value.
func (c *QualityCheck) distance(m []float64, n int) (float64, []float64) {
	p := len(c.Mean)
	cov := mat.NewSymDense(p, nil)
	for i := range p {
		for j := i; j < p; j++ {
			cov.SetSym(i, j, c.Between[i*p+j]+c.Within[i*p+j]/float64(max(n, 1)))
		}
	}
	d := mat.NewVecDense(p, nil)
	z := make([]float64, p)
	for i := range p {
		d.SetVec(i, m[i]-c.Mean[i])
		if v := cov.At(i, i); v > 0 {
			z[i] = d.AtVec(i) / math.Sqrt(v)
		}
	}
	var ch mat.Cholesky
	if !ch.Factorize(cov) {
		return math.Inf(1), z
	}
	var x mat.VecDense
	if err := ch.SolveVecTo(&x, d); err != nil {
		return math.Inf(1), z
	}
	return mat.Dot(d, &x), z
}

func (q *SlideQuality) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: slide quality: "+format, append([]any{ErrInvalidBaseline}, args...)...)
	}
	if !(q.FalseFlag > 0 && q.FalseFlag < 0.5) || q.Slides < minQualitySlides || len(q.Checks) == 0 {
		return bad("false flag %v, %d slides, %d checks: want 0 < rate < 0.5, at least %d slides and a check", q.FalseFlag, q.Slides, len(q.Checks), minQualitySlides)
	}
	for _, c := range q.Checks {
		p := len(c.Mean)
		switch {
		case c.Name == "" || len(c.Stats) == 0:
			return bad("a check without a name or statistics")
		case c.Weights != nil && (len(c.Weights) != len(c.Stats) || p != 1):
			return bad("check %s: %d weights for %d statistics and %d means", c.Name, len(c.Weights), len(c.Stats), p)
		case c.Weights == nil && p != len(c.Stats):
			return bad("check %s: %d means for %d statistics", c.Name, p, len(c.Stats))
		case c.Log != nil && len(c.Log) != len(c.Stats):
			return bad("check %s: %d log marks for %d statistics", c.Name, len(c.Log), len(c.Stats))
		case len(c.Between) != p*p || len(c.Within) != p*p:
			return bad("check %s: covariances of %d and %d values, want %d", c.Name, len(c.Between), len(c.Within), p*p)
		case !(c.Limit > 0) || math.IsInf(c.Limit, 0):
			return bad("check %s: limit %v", c.Name, c.Limit)
		}
		for _, v := range slices.Concat(c.Mean, c.Between, c.Within, c.Weights) {
			if !finite(v) {
				return bad("check %s: a value is not finite", c.Name)
			}
		}
	}
	return nil
}

// SlideAppearance accumulates a slide's appearance statistics, cell by
// cell, for the gate (of the cells predicted uninfected, as the reference
// is made: parasites change a cell's colour): only sums are kept (of the values and of log(1 +
// value), which log-read checks use), so that it can be stored with the
// slide and resumed after a restart.
type SlideAppearance struct {
	Cells int                `json:"cells"`
	Sum   map[string]float64 `json:"sum"`
}

// Add counts one cell whose statistics values are named by names.
// Non-finite values make the whole cell ignored.
func (a *SlideAppearance) Add(names []string, values []float64) {
	if len(names) != len(values) {
		return
	}
	for _, v := range values {
		if !finite(v) {
			return
		}
	}
	if a.Sum == nil {
		a.Sum = make(map[string]float64, len(names))
	}
	for i, n := range names {
		a.Sum[n] += values[i]
		a.Sum[logKey(n)] += logStat(values[i])
	}
	a.Cells++
}

// QualityFlag is one check a slide failed.
type QualityFlag struct {
	Check string `json:"check"`
	// Distance is the slide's Mahalanobis distance from the reference
	// slides, Limit the gate's (both as distances, not squared).
	Distance float64 `json:"distance"`
	Limit    float64 `json:"limit"`
	// Value is the slide's mean of a one-value check, Direction "below" or
	// "above" the reference; for a check of several statistics, Worst
	// names the one furthest out (by its own standardised difference) and
	// Direction says which way it lies.
	Value     float64 `json:"value,omitempty"`
	Worst     string  `json:"worst,omitempty"`
	Direction string  `json:"direction"`
	Message   string  `json:"message"`
}

// qualityAdvice says what an operator can do about each check.
var qualityAdvice = map[string]string{
	"stain":      "restain or check the staining protocol",
	"brightness": "check the lamp, exposure and condenser",
	"sharpness":  "refocus and rescan",
	"framing":    "check the magnification and the crop settings",
}

// Check runs the gate on a completed slide (slide is its id, for the
// messages). It returns the failed checks (none for a slide like the
// reference's) and false when the slide has too few cells to judge or
// lacks every check's statistics.
func (q *SlideQuality) Check(slide string, a SlideAppearance) ([]QualityFlag, bool) {
	if q == nil || a.Cells < MinQualityCells {
		return nil, false
	}
	var out []QualityFlag
	judged := false
	for i := range q.Checks {
		c := &q.Checks[i]
		m := make([]float64, len(c.Mean))
		ok := true
		for k, n := range c.Stats {
			if c.Log != nil && c.Log[k] {
				n = logKey(n)
			}
			s, has := a.Sum[n]
			if !has {
				ok = false
				break
			}
			if c.Weights != nil {
				m[0] += c.Weights[k] * s / float64(a.Cells)
			} else {
				m[k] = s / float64(a.Cells)
			}
		}
		if !ok {
			continue
		}
		judged = true
		d2, z := c.distance(m, a.Cells)
		if !(d2 > c.Limit) {
			continue
		}
		f := QualityFlag{Check: c.Name, Distance: math.Sqrt(d2), Limit: math.Sqrt(c.Limit)}
		w := 0
		for k := range z {
			if math.Abs(z[k]) > math.Abs(z[w]) {
				w = k
			}
		}
		f.Direction = "above"
		if z[w] < 0 {
			f.Direction = "below"
		}
		advice := qualityAdvice[c.Name]
		if advice == "" {
			advice = "check the slide"
		}
		if len(m) == 1 {
			f.Value = m[0]
			f.Message = fmt.Sprintf("slide %s: %s %.4g %s the reference slides (%.4g..%.4g over %d slides; %.1f standard deviations, limit %.1f): %s; a slide quality matter, not model drift",
				slide, c.Name, m[0], f.Direction, c.RefLo, c.RefHi, q.Slides, f.Distance, f.Limit, advice)
		} else {
			f.Worst = c.Stats[w]
			f.Message = fmt.Sprintf("slide %s: %s unlike the reference slides (distance %.1f, limit %.1f; furthest out: %s %s their mean by %.1f standard deviations): %s; a slide quality matter, not model drift",
				slide, c.Name, f.Distance, f.Limit, f.Worst, f.Direction, math.Abs(z[w]), advice)
		}
		out = append(out, f)
	}
	return out, judged
}
