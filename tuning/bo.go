package tuning

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"

	"gonum.org/v1/gonum/optimize"
)

// Observation is one finished trial as the suggester sees it. Value is
// oriented so that lower is better (the runner negates maximised metrics).
type Observation struct {
	Point  []float64 // unit-cube point (Space.Point of the trial's params)
	Value  float64   // ignored when Failed
	Failed bool
}

var (
	// ErrTooFewObservations is returned while fewer than two trials have
	// succeeded: a GP fitted to one value has no scale to standardise by,
	// and its suggestion would be arbitrary; exploration should go on.
	ErrTooFewObservations = errors.New("bayesian search: fewer than 2 successful trials")
	// ErrSpaceExhausted is returned when every combination of a discrete
	// space has been tried or is pending: repeating one would spend a
	// trial on a known answer.
	ErrSpaceExhausted = errors.New("bayesian search: every point of the space has been tried")
)

// Options tune Suggest's effort. The zero value means the defaults, which
// keep a suggestion under 100 ms with 100 trials in 6 dimensions on two
// cores.
type Options struct {
	// Candidates is how many uniformly random points the acquisition is
	// first evaluated at (default 512).
	Candidates int
	// LocalStarts is how many of the best candidates are refined by L-BFGS
	// over the continuous coordinates (default 5).
	LocalStarts int
	// Fit controls the hyperparameter fit. Fit.Warm (a previous
	// Suggestion's GP.Hyper()) makes refits cheaper; since the result then
	// depends on it, a caller that must reproduce suggestions on resume
	// should journal it or leave it empty.
	Fit FitOptions
}

// Suggestion is Suggest's answer with the model behind it.
type Suggestion struct {
	Point []float64 // unit-cube point; discrete coordinates at their value's centre
	LogEI float64   // log expected improvement at Point (standardised units)
	GP    *GP       // the fit to the observations (pending points excluded)
}

// Suggest returns the next unit-cube point to try, by Gaussian-process
// Bayesian optimisation with log expected improvement. See SuggestWith.
func Suggest(space *Space, obs []Observation, pending [][]float64, rng *rand.Rand) ([]float64, error) {
	s, err := SuggestWith(space, obs, pending, rng, Options{})
	if err != nil {
		return nil, err
	}
	return s.Point, nil
}

// SuggestWith fits a GP to the observations and returns the point that
// maximises log expected improvement over the best value, among points whose
// parameters differ from every observed and pending trial's.
//
// Failed trials are given the worst observed value, so the model learns
// that their region is bad instead of forgetting it and proposing it again.
// Pending trials (running in parallel) are believed at their predicted mean
// (the kriging believer), which removes the uncertainty, and so the
// expected improvement, around them, so that parallel suggestions spread.
//
// The acquisition is searched over valid values only: int and categorical
// coordinates are always at the centre of a value's share, from random and
// local candidates (or every combination, when a discrete space is small),
// and L-BFGS refines only the continuous coordinates, followed by a sweep
// over the discrete values. All randomness comes from rng.
func SuggestWith(space *Space, obs []Observation, pending [][]float64, rng *rand.Rand, opt Options) (*Suggestion, error) {
	c := newCoder(space)
	dim := space.Dim()
	if dim == 0 {
		return nil, ErrSpaceExhausted
	}
	for i, o := range obs {
		if len(o.Point) != dim {
			return nil, fmt.Errorf("bayesian search: observation %d has dimension %d, want %d", i, len(o.Point), dim)
		}
	}
	for i, p := range pending {
		if len(p) != dim {
			return nil, fmt.Errorf("bayesian search: pending point %d has dimension %d, want %d", i, len(p), dim)
		}
	}
	tried := make([]Params, 0, len(obs)+len(pending))
	for _, o := range obs {
		tried = append(tried, space.Params(o.Point))
	}
	for _, p := range pending {
		tried = append(tried, space.Params(p))
	}
	// A small discrete space can be checked for exhaustion before anything
	// is fitted, and must be: with its last combination pending there may be
	// too few successes to fit at all.
	combos := c.combinations()
	if c.discreteOnly() && combos <= float64(len(tried)) && c.firstUntried(tried) == nil {
		return nil, ErrSpaceExhausted
	}

	// A non-finite value (a diverged run) is as bad as a failure.
	worst, nOK := math.Inf(-1), 0
	for _, o := range obs {
		if !o.Failed && isFinite(o.Value) {
			worst = math.Max(worst, o.Value)
			nOK++
		}
	}
	if nOK < 2 {
		return nil, ErrTooFewObservations
	}
	feats := make([][]float64, len(obs))
	vals := make([]float64, len(obs))
	for i, o := range obs {
		feats[i] = c.encode(o.Point, nil)
		vals[i] = o.Value
		if o.Failed || !isFinite(o.Value) {
			vals[i] = worst
		}
	}
	fit, err := FitGP(feats, vals, c.groups, opt.Fit)
	if err != nil {
		return nil, fmt.Errorf("bayesian search: %w", err)
	}
	pfeats := make([][]float64, len(pending))
	for i, p := range pending {
		pfeats[i] = c.encode(p, nil)
	}
	model, means, err := fit.believe(pfeats)
	if err != nil {
		return nil, fmt.Errorf("bayesian search: %w", err)
	}
	best := slices.Min(model.y[:len(obs)])
	if len(means) > 0 {
		best = math.Min(best, slices.Min(means))
	}
	acq := &acquisition{g: model, c: c, best: best}

	// Candidates, each scored by log EI.
	var cands []candidate
	add := func(u []float64) {
		c.snap(u)
		cands = append(cands, candidate{u: u, score: acq.value(u)})
	}
	if c.discreteOnly() && combos <= maxEnumerate {
		for u := range c.enumerate() {
			add(u)
		}
	} else {
		nRand := cmp.Or(opt.Candidates, 512)
		for range nRand {
			u := make([]float64, dim)
			for k := range u {
				u[k] = rng.Float64()
			}
			add(u)
		}
		// Around the best trials, where the improvement usually is once
		// the model has found the basin.
		order := make([]int, 0, len(obs))
		for i, o := range obs {
			if !o.Failed && isFinite(o.Value) {
				order = append(order, i)
			}
		}
		slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(obs[a].Value, obs[b].Value) })
		ls := fit.LengthScales()
		for _, i := range order[:min(len(order), 5)] {
			for m := range 24 {
				scale := []float64{0.02, 0.1, 0.3}[m%3]
				u := slices.Clone(obs[i].Point)
				for k := range u {
					if c.kind[k] == kindFloat {
						u[k] += rng.NormFloat64() * scale * math.Min(ls[k], 1)
						u[k] = math.Min(math.Max(u[k], 0), 1)
					} else if rng.IntN(dim) == 0 {
						u[k] = rng.Float64()
					}
				}
				add(u)
			}
		}
		// Refine the best candidates.
		sorted := sortCandidates(cands)
		nLocal := cmp.Or(opt.LocalStarts, 5)
		for _, s := range sorted[:min(len(sorted), nLocal)] {
			u := acq.refine(slices.Clone(s.u), rng)
			cands = append(cands, candidate{u: u, score: acq.value(u)})
		}
	}

	for _, cd := range sortCandidates(cands) {
		if !c.isTried(space.Params(cd.u), tried) {
			return &Suggestion{Point: cd.u, LogEI: cd.score, GP: fit}, nil
		}
	}
	// Every candidate repeats a trial: only possible in a (mostly) discrete
	// space. Fall back to any untried point.
	if c.discreteOnly() {
		u := c.firstUntried(tried)
		if u == nil {
			return nil, ErrSpaceExhausted
		}
		return &Suggestion{Point: u, LogEI: acq.value(u), GP: fit}, nil
	}
	for range 1000 {
		u := make([]float64, dim)
		for k := range u {
			u[k] = rng.Float64()
		}
		c.snap(u)
		if !c.isTried(space.Params(u), tried) {
			return &Suggestion{Point: u, LogEI: acq.value(u), GP: fit}, nil
		}
	}
	return nil, ErrSpaceExhausted
}

// maxEnumerate bounds the discrete spaces whose every combination is a
// candidate.
const maxEnumerate = 4096

func isFinite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

type candidate struct {
	u     []float64
	score float64
}

// sortCandidates orders by score, best first; stable, so ties keep their
// (deterministic) generation order.
func sortCandidates(cs []candidate) []candidate {
	out := slices.Clone(cs)
	slices.SortStableFunc(out, func(a, b candidate) int {
		// NaN scores sort last.
		switch {
		case math.IsNaN(a.score) && math.IsNaN(b.score):
			return 0
		case math.IsNaN(a.score):
			return 1
		case math.IsNaN(b.score):
			return -1
		}
		return cmp.Compare(b.score, a.score)
	})
	return out
}

// acquisition is log expected improvement of a fitted GP over best, all in
// standardised units, as a function of a unit-cube point.
type acquisition struct {
	g    *GP
	c    *coder
	best float64
	feat []float64
	kbuf []float64
}

func (a *acquisition) value(u []float64) float64 {
	a.feat = a.c.encode(u, a.feat)
	v, _ := a.logEIAt(a.feat, nil)
	return v
}

// logEIAt returns log EI at features x and, if grad is not nil, its
// gradient with respect to the features.
func (a *acquisition) logEIAt(x []float64, grad []float64) (float64, bool) {
	var dm, dv []float64
	if grad != nil {
		dm = make([]float64, len(x))
		dv = make([]float64, len(x))
	}
	if a.kbuf == nil {
		a.kbuf = make([]float64, 2*len(a.g.x))
	}
	mu, vr := a.g.predictStd(x, dm, dv, a.kbuf)
	// Below this σ the point is a training point in all but name; the
	// floor keeps z finite.
	const minVar = 1e-20
	clamped := vr < minVar
	vr = math.Max(vr, minVar)
	sd := math.Sqrt(vr)
	z := (a.best - mu) / sd
	val := logH(z) + math.Log(sd)
	if grad != nil {
		r := dLogH(z)
		dMu := -r / sd
		dSd := (1 - r*z) / sd
		if clamped {
			dSd = 0
		}
		for f := range grad {
			grad[f] = dMu*dm[f] + dSd*dv[f]/(2*sd)
		}
	}
	return val, true
}

// refine maximises log EI from u over the continuous coordinates by L-BFGS,
// then sweeps the discrete coordinates over their values, and refines the
// continuous ones again if the sweep moved.
func (a *acquisition) refine(u []float64, rng *rand.Rand) []float64 {
	u = a.refineContinuous(u)
	if a.c.hasDiscrete() && a.sweepDiscrete(u, rng) && a.c.hasContinuous() {
		u = a.refineContinuous(u)
	}
	return u
}

// refineContinuous runs L-BFGS on z with u = (1 + sin z)/2 for each float
// coordinate: a smooth map onto [0,1] keeps the search inside the cube
// without bounds that L-BFGS does not know.
func (a *acquisition) refineContinuous(u []float64) []float64 {
	var idx []int
	for k, kd := range a.c.kind {
		if kd == kindFloat {
			idx = append(idx, k)
		}
	}
	if len(idx) == 0 {
		return u
	}
	z0 := make([]float64, len(idx))
	for i, k := range idx {
		z0[i] = math.Asin(2*u[k] - 1)
	}
	work := slices.Clone(u)
	feat := make([]float64, a.c.nfeat)
	fgrad := make([]float64, a.c.nfeat)
	var lastZ []float64
	var lastF float64
	lastG := make([]float64, len(idx))
	eval := func(z []float64) {
		if lastZ != nil && slices.Equal(lastZ, z) {
			return
		}
		lastZ = slices.Clone(z)
		for i, k := range idx {
			work[k] = (1 + math.Sin(z[i])) / 2
		}
		feat = a.c.encode(work, feat)
		v, _ := a.logEIAt(feat, fgrad)
		lastF = -v
		for i, k := range idx {
			// A float coordinate is its own feature.
			lastG[i] = -fgrad[a.c.off[k]] * math.Cos(z[i]) / 2
		}
		if !isFinite(lastF) {
			lastF = math.Inf(1)
			clear(lastG)
		}
	}
	p := optimize.Problem{
		Func: func(z []float64) float64 { eval(z); return lastF },
		Grad: func(g, z []float64) { eval(z); copy(g, lastG) },
	}
	f0 := p.Func(z0)
	res, _ := optimize.Minimize(p, z0, &optimize.Settings{
		MajorIterations: 30,
		FuncEvaluations: 80,
		Converger:       &optimize.FunctionConverge{Absolute: 1e-7, Relative: 1e-7, Iterations: 4},
	}, &optimize.LBFGS{})
	if res == nil || !(res.F < f0) {
		return u
	}
	for i, k := range idx {
		u[k] = (1 + math.Sin(res.X[i])) / 2
	}
	a.c.snap(u)
	return u
}

// sweepDiscrete tries other values of every discrete coordinate in turn,
// keeping each improvement, and reports whether u changed. Parameters with
// many values try their neighbours and a few random values.
func (a *acquisition) sweepDiscrete(u []float64, rng *rand.Rand) bool {
	cur := a.value(u)
	moved := false
	for k, kd := range a.c.kind {
		if kd == kindFloat {
			continue
		}
		n := a.c.size[k]
		j0 := a.c.index(k, u[k])
		var tries []int
		if n <= 16 {
			for j := range n {
				tries = append(tries, j)
			}
		} else {
			for _, dj := range []int{-2, -1, 1, 2} {
				if j := j0 + dj; j >= 0 && j < n {
					tries = append(tries, j)
				}
			}
			for range 4 {
				tries = append(tries, rng.IntN(n))
			}
		}
		bestJ := j0
		for _, j := range tries {
			if j == j0 {
				continue
			}
			u[k] = a.c.centre(k, j)
			if v := a.value(u); v > cur {
				cur, bestJ, moved = v, j, true
			}
		}
		u[k] = a.c.centre(k, bestJ)
	}
	return moved
}

// Kinds of a coordinate for the GP.
const (
	kindFloat = iota
	kindInt
	kindCategorical
)

// coder turns unit-cube points into GP features: a float coordinate is its
// own feature; an int coordinate is the centre of its value's share (so all
// points decoding to one integer are one GP input, and neighbouring
// integers are near); a categorical coordinate is a one-hot block, because
// the order of the values in the study file means nothing and a single
// coordinate would make the first and last value the least alike.
type coder struct {
	sp     *Space
	kind   []int
	size   []int // number of values of a discrete coordinate
	off    []int // first feature of each coordinate
	groups []int // feature -> coordinate
	nfeat  int
}

func newCoder(sp *Space) *coder {
	c := &coder{sp: sp}
	for i, p := range sp.Parameters() {
		c.off = append(c.off, c.nfeat)
		switch p.Type {
		case TypeFloat:
			c.kind = append(c.kind, kindFloat)
			c.size = append(c.size, 0)
			c.nfeat++
			c.groups = append(c.groups, i)
		case TypeInt:
			c.kind = append(c.kind, kindInt)
			c.size = append(c.size, int(*p.Max-*p.Min)+1)
			c.nfeat++
			c.groups = append(c.groups, i)
		case TypeCategorical:
			c.kind = append(c.kind, kindCategorical)
			c.size = append(c.size, len(p.Values))
			for range p.Values {
				c.groups = append(c.groups, i)
			}
			c.nfeat += len(p.Values)
		}
	}
	return c
}

func (c *coder) discreteOnly() bool { return !c.hasContinuous() }

func (c *coder) hasContinuous() bool { return slices.Contains(c.kind, kindFloat) }

func (c *coder) hasDiscrete() bool {
	return slices.ContainsFunc(c.kind, func(k int) bool { return k != kindFloat })
}

// combinations is the number of points of the discrete coordinates (+Inf
// with a float one), as a float so that large spaces do not overflow.
func (c *coder) combinations() float64 {
	n := 1.0
	for k, kd := range c.kind {
		if kd == kindFloat {
			return math.Inf(1)
		}
		n *= float64(c.size[k])
	}
	return n
}

func clampUnit(x float64) float64 { return math.Min(math.Max(x, 0), math.Nextafter(1, 0)) }

// index is the value index of discrete coordinate k at x, as Space.Params
// decodes it.
func (c *coder) index(k int, x float64) int {
	x = clampUnit(x)
	p := c.sp.params[k]
	if c.kind[k] == kindInt {
		return int(intValue(p, x) - int64(*p.Min))
	}
	return min(int(x*float64(c.size[k])), c.size[k]-1)
}

// centre is the coordinate at the centre of value j's share, as Space.Point
// encodes it.
func (c *coder) centre(k, j int) float64 {
	p := c.sp.params[k]
	if c.kind[k] == kindInt && p.Log {
		f := *p.Min + float64(j)
		a, b := math.Log(*p.Min-0.5), math.Log(*p.Max+0.5)
		return ((math.Log(f-0.5)+math.Log(f+0.5))/2 - a) / (b - a)
	}
	return (float64(j) + 0.5) / float64(c.size[k])
}

// snap moves every discrete coordinate of u to its value's centre and
// clamps float ones into [0,1), in place, so that the point returned is
// exactly the one the GP scored and Space.Params decodes the intended value.
func (c *coder) snap(u []float64) {
	for k, kd := range c.kind {
		if kd == kindFloat {
			u[k] = clampUnit(u[k])
		} else {
			u[k] = c.centre(k, c.index(k, u[k]))
		}
	}
}

// encode writes u's features into dst (reallocated if too short).
func (c *coder) encode(u, dst []float64) []float64 {
	if cap(dst) < c.nfeat {
		dst = make([]float64, c.nfeat)
	}
	dst = dst[:c.nfeat]
	for k, kd := range c.kind {
		o := c.off[k]
		switch kd {
		case kindFloat:
			dst[o] = clampUnit(u[k])
		case kindInt:
			dst[o] = c.centre(k, c.index(k, u[k]))
		case kindCategorical:
			j := c.index(k, u[k])
			for v := range c.size[k] {
				dst[o+v] = 0
			}
			dst[o+j] = 1
		}
	}
	return dst
}

// enumerate yields every point of a discrete-only space, in lexicographic
// order of the value indices (the last coordinate fastest).
func (c *coder) enumerate() func(yield func([]float64) bool) {
	return func(yield func([]float64) bool) {
		dim := len(c.kind)
		idx := make([]int, dim)
		for {
			u := make([]float64, dim)
			for k := range u {
				u[k] = c.centre(k, idx[k])
			}
			if !yield(u) {
				return
			}
			k := dim - 1
			for ; k >= 0; k-- {
				idx[k]++
				if idx[k] < c.size[k] {
					break
				}
				idx[k] = 0
			}
			if k < 0 {
				return
			}
		}
	}
}

// firstUntried returns the first point of a discrete-only space, in
// enumeration order, that is not among tried, or nil. It stops after
// len(tried)+1 points, which is enough since each tried entry rules out at
// most one point.
func (c *coder) firstUntried(tried []Params) []float64 {
	if !c.discreteOnly() {
		return nil
	}
	n := 0
	for u := range c.enumerate() {
		if !c.isTried(c.sp.Params(u), tried) {
			return u
		}
		if n++; n > len(tried) {
			break
		}
	}
	return nil
}

// isTried reports whether ps equals, parameter by parameter, an observed or
// pending trial's values.
func (c *coder) isTried(ps Params, tried []Params) bool {
	for _, t := range tried {
		same := true
		for _, p := range c.sp.params {
			if !sameValue(ps[p.Name], t[p.Name]) {
				same = false
				break
			}
		}
		if same {
			return true
		}
	}
	return false
}

// logH returns log h(z) with h(z) = φ(z) + zΦ(z), so that log EI = log h(z)
// + log σ with z = (best - μ)/σ. Computed directly, h underflows to 0 for z
// below about -38 and loses all precision well before: φ(z) and zΦ(z)
// cancel. Far from the observations that is where every candidate sits, and
// a flat zero acquisition leaves the optimiser with no direction. The
// branches follow Ament et al. (2023), "Unexpected improvements to expected
// improvement for Bayesian optimization", eq. 9: with erfcx(x) =
// exp(x²)erfc(x), h(z) = φ(z)(1 - |z|√(π/2) erfcx(-z/√2)), evaluated in
// log space; below -1/√ε the asymptote h ≈ φ(z)/z² is exact to rounding.
func logH(z float64) float64 {
	const (
		c1 = 0.9189385332046727 // log(2π)/2
		c2 = 0.2257913526447274 // log(π/2)/2
	)
	switch {
	case z > -1:
		return math.Log(normPDF(z) + z*normCDF(z))
	case z > -1/math.Sqrt(0x1p-52):
		return -z*z/2 - c1 + log1mexp(math.Log(erfcx(-z/math.Sqrt2)*-z)+c2)
	default:
		return -z*z/2 - c1 - 2*math.Log(-z)
	}
}

// dLogH is d log h/dz = Φ(z)/h(z), formed in log space for the same reason.
func dLogH(z float64) float64 {
	return math.Exp(logNormCDF(z) - logH(z))
}

// LogEI is the log expected improvement below best of a normal posterior
// with mean mu and standard deviation sd (lower is better), finite however
// small the improvement.
func LogEI(mu, sd, best float64) float64 {
	return logH((best-mu)/sd) + math.Log(sd)
}

func normPDF(z float64) float64 { return math.Exp(-z*z/2) / math.Sqrt(2*math.Pi) }

func normCDF(z float64) float64 { return math.Erfc(-z/math.Sqrt2) / 2 }

func logNormCDF(z float64) float64 {
	if z > -5 {
		return math.Log(normCDF(z))
	}
	x := -z / math.Sqrt2
	return math.Log(erfcx(x)) - x*x - math.Ln2
}

// log1mexp is log(1 - exp(x)) for x < 0, accurate at both ends (Mächler
// 2012).
func log1mexp(x float64) float64 {
	if x > -math.Ln2 {
		return math.Log(-math.Expm1(x))
	}
	return math.Log1p(-math.Exp(x))
}

// erfcx is the scaled complementary error function exp(x²)erfc(x) for
// x ≥ 0, which the standard library lacks. Directly for small x (exp(x²)
// is still finite and erfc still relatively accurate); for larger x by the
// continued fraction erfc(x) = exp(-x²)/√π · 1/(x + (1/2)/(x + 1/(x +
// (3/2)/(x + ...)))), evaluated by the modified Lentz method, which
// converges in a few dozen terms there.
func erfcx(x float64) float64 {
	if x < 10 {
		return math.Exp(x*x) * math.Erfc(x)
	}
	const tiny = 1e-300
	f := x
	C, D := f, 0.0
	for k := 1; k < 500; k++ {
		a := float64(k) / 2
		D = x + a*D
		if D == 0 {
			D = tiny
		}
		D = 1 / D
		C = x + a/C
		if C == 0 {
			C = tiny
		}
		delta := C * D
		f *= delta
		if math.Abs(delta-1) < 1e-16 {
			break
		}
	}
	return 1 / (math.Sqrt(math.Pi) * f)
}
