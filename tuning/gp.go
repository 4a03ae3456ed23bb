package tuning

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"

	"gonum.org/v1/gonum/mat"
	"gonum.org/v1/gonum/optimize"
)

// GP is a Gaussian-process regression model with a Matérn 5/2 kernel, the
// surrogate of the Bayesian exploitation phase. Matérn 5/2 rather than the
// squared exponential because training curves and validation losses are
// rarely infinitely smooth, and a too-smooth prior extrapolates with false
// confidence.
//
// Inputs are feature vectors; every feature belongs to one input dimension
// (a search parameter), and each dimension has its own length scale (ARD),
// shared by all of its features: a categorical parameter is a one-hot block
// of features with one length scale, so that it counts as one parameter in
// the fit and in the report's parameter importance, however many values it
// has.
//
// Targets are standardised (mean 0, std 1) before fitting, so that the
// hyperparameters' priors and bounds mean the same in every study whatever
// the metric's units.
type GP struct {
	groups []int // feature -> dimension
	dims   int

	x          [][]float64 // training features
	y          []float64   // standardised targets
	yMean, ySD float64

	hyper  []float64 // log length scales, log signal variance, log excess noise
	invLen []float64 // 1/ℓ of every feature's dimension

	chol  mat.Cholesky
	alpha []float64     // K⁻¹y
	kinv  *mat.SymDense // K⁻¹, for the variance and its gradient
}

// Indices into the hyperparameter vector after the length scales.
const (
	hypSignal = 0
	hypNoise  = 1
)

// noiseFloor is added to the fitted noise variance: it keeps K well
// conditioned when points repeat (a discrete space, a rerun) and when the
// objective is noiseless and the likelihood would drive the noise to zero.
const noiseFloor = 1e-6

// Priors and bounds on the log hyperparameters (targets standardised, inputs
// in the unit cube). Length scales below 0.01 would mean the objective
// changes completely between neighbouring trials, which a hundred trials
// cannot resolve; above 20 a dimension is flat anyway. The priors only keep
// a fit with few points from those extremes; with enough data the
// likelihood dominates. The noise prior is wide (a factor e³ per standard
// deviation) around a small value: on a handful of smooth points the
// likelihood cannot tell noise from signal, and assuming little noise lets
// the model interpolate a deterministic objective, while a noisy one shows
// its noise soon enough for the likelihood to overrule the prior.
var (
	logLenPrior    = normalPrior{mean: math.Log(0.4), sd: 1}
	logSignalPrior = normalPrior{mean: 0, sd: 1.5}
	logNoisePrior  = normalPrior{mean: math.Log(1e-4), sd: 3}

	logLenBounds    = [2]float64{math.Log(0.01), math.Log(20)}
	logSignalBounds = [2]float64{math.Log(0.05), math.Log(20)}
	logNoiseBounds  = [2]float64{math.Log(1e-10), math.Log(1)}
)

type normalPrior struct{ mean, sd float64 }

// logPDF returns the log density up to a constant and its derivative.
func (p normalPrior) logPDF(x float64) (float64, float64) {
	d := (x - p.mean) / p.sd
	return -0.5 * d * d, -d / p.sd
}

// FitOptions control the hyperparameter fit.
type FitOptions struct {
	// Warm is a previous fit's Hyper, a start besides the fixed ones: with
	// one more trial the optimum barely moves, so a start there converges
	// in a few iterations.
	Warm []float64
	// Iterations bounds the L-BFGS iterations of each start (default 25).
	Iterations int
	// Starts is how many of the best starts L-BFGS runs from (default 2,
	// or 1 with Warm: the screening still compares Warm with the fixed
	// starts, and a refit is meant to be cheap).
	Starts int
}

// ErrNoData is returned by FitGP without training points.
var ErrNoData = errors.New("gp: no training points")

// FitGP fits a GP to features x (one row per point) and targets y, with
// groups mapping each feature to its dimension (nil: one feature per
// dimension). Hyperparameters maximise the log marginal likelihood plus
// log-normal priors, by L-BFGS with analytic gradients. Five fixed starts
// and opt.Warm are screened by their objective, L-BFGS runs from the best
// opt.Starts of them, and the best optimum wins. Several starts because the
// likelihood of a small data set often has a short-length-scale optimum
// (everything is noise-free wiggles) and a long one (a smooth trend plus
// noise), and a single start finds whichever is nearest.
func FitGP(x [][]float64, y []float64, groups []int, opt FitOptions) (*GP, error) {
	g, err := newGP(x, y, groups)
	if err != nil {
		return nil, err
	}
	d := g.dims
	iters := cmp.Or(opt.Iterations, 25)
	nStarts := opt.Starts
	if nStarts <= 0 {
		nStarts = 2
		if len(opt.Warm) == d+2 {
			nStarts = 1
		}
	}
	var starts [][]float64
	if len(opt.Warm) == d+2 {
		starts = append(starts, clampHyper(slices.Clone(opt.Warm), d))
	}
	// Short, medium and long length scales, with little or some noise.
	for _, s := range [][2]float64{{0.4, 1e-4}, {0.15, 1e-5}, {1.5, 1e-2}, {0.4, 1e-2}, {0.8, 1e-6}} {
		h := make([]float64, d+2)
		for i := range d {
			h[i] = math.Log(s[0])
		}
		h[d+hypSignal] = 0
		h[d+hypNoise] = math.Log(s[1])
		starts = append(starts, h)
	}

	pre := g.sqDists()
	// Screen the starts by the objective alone (one Cholesky each, no
	// inverse), then run L-BFGS from the best few: the gradient costs
	// three times the value, and most starts lead to the same optimum.
	obj := newLMLObjective(g, pre)
	screened := make([]float64, len(starts))
	for i, h := range starts {
		f, ok := g.logPosterior(h, pre, nil)
		screened[i] = math.Inf(1)
		if ok {
			screened[i] = -f
		}
	}
	order := make([]int, len(starts))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(screened[a], screened[b]) })
	best, bestF := []float64(nil), math.Inf(1)
	for _, i := range order[:min(nStarts, len(order))] {
		h0 := starts[i]
		if math.IsInf(screened[i], 1) {
			continue
		}
		p := optimize.Problem{Func: obj.f, Grad: obj.grad}
		// An error here is an iteration or evaluation limit, or a line
		// search that cannot progress: either way the best point seen is
		// kept, and the screened start if nothing beat it.
		res, _ := optimize.Minimize(p, h0, &optimize.Settings{
			// The gradient of the log posterior is in nats per unit of
			// log hyperparameter: below 1e-2 nothing visible changes.
			GradientThreshold: 1e-2,
			MajorIterations:   iters,
			FuncEvaluations:   2 * iters,
			Converger:         &optimize.FunctionConverge{Absolute: 1e-4, Relative: 1e-6, Iterations: 3},
		}, &optimize.LBFGS{})
		x, f := h0, screened[i]
		if res != nil && res.F < f {
			x, f = res.X, res.F
		}
		if f < bestF {
			best, bestF = slices.Clone(x), f
		}
	}
	if best == nil {
		return nil, errors.New("gp: no start gave a finite likelihood")
	}
	if err := g.setHyper(clampHyper(best, d)); err != nil {
		return nil, err
	}
	return g, nil
}

// NewGPWithHyper conditions a GP on x, y with given hyperparameters (no fit).
func NewGPWithHyper(x [][]float64, y []float64, groups []int, hyper []float64) (*GP, error) {
	g, err := newGP(x, y, groups)
	if err != nil {
		return nil, err
	}
	if len(hyper) != g.dims+2 {
		return nil, fmt.Errorf("gp: %d hyperparameters for %d dimensions", len(hyper), g.dims)
	}
	if err := g.setHyper(slices.Clone(hyper)); err != nil {
		return nil, err
	}
	return g, nil
}

func newGP(x [][]float64, y []float64, groups []int) (*GP, error) {
	if len(x) == 0 {
		return nil, ErrNoData
	}
	if len(x) != len(y) {
		return nil, fmt.Errorf("gp: %d points and %d targets", len(x), len(y))
	}
	nf := len(x[0])
	if groups == nil {
		groups = make([]int, nf)
		for i := range groups {
			groups[i] = i
		}
	}
	if len(groups) != nf {
		return nil, fmt.Errorf("gp: %d features but %d groups", nf, len(groups))
	}
	dims := 0
	for _, gi := range groups {
		dims = max(dims, gi+1)
	}
	var mean float64
	for _, v := range y {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, fmt.Errorf("gp: target %v is not finite", v)
		}
		mean += v
	}
	mean /= float64(len(y))
	var ss float64
	for _, v := range y {
		ss += (v - mean) * (v - mean)
	}
	sd := math.Sqrt(ss / float64(len(y)))
	if sd < 1e-12*math.Max(1, math.Abs(mean)) {
		// All targets equal: any scale will do, and 1 avoids dividing by 0.
		sd = 1
	}
	g := &GP{groups: groups, dims: dims, yMean: mean, ySD: sd}
	for i, row := range x {
		if len(row) != nf {
			return nil, fmt.Errorf("gp: point %d has %d features, want %d", i, len(row), nf)
		}
		g.x = append(g.x, slices.Clone(row))
		g.y = append(g.y, (y[i]-mean)/sd)
	}
	return g, nil
}

func clampHyper(h []float64, d int) []float64 {
	for i := range d {
		h[i] = math.Min(math.Max(h[i], logLenBounds[0]), logLenBounds[1])
	}
	h[d+hypSignal] = math.Min(math.Max(h[d+hypSignal], logSignalBounds[0]), logSignalBounds[1])
	h[d+hypNoise] = math.Min(math.Max(h[d+hypNoise], logNoiseBounds[0]), logNoiseBounds[1])
	return h
}

// Matern52 is the Matérn 5/2 correlation at scaled distance r:
// (1 + √5 r + 5r²/3) exp(-√5 r).
func Matern52(r float64) float64 {
	s := math.Sqrt(5) * r
	return (1 + s + s*s/3) * math.Exp(-s)
}

// sqDists returns, per dimension, the squared feature distances of every
// pair of training points (row-major n×n): the fit rescales them by the
// length scales instead of recomputing them for every evaluation.
func (g *GP) sqDists() [][]float64 {
	n := len(g.x)
	out := make([][]float64, g.dims)
	for d := range out {
		out[d] = make([]float64, n*n)
	}
	for i := range n {
		for j := i + 1; j < n; j++ {
			for f, d := range g.groups {
				diff := g.x[i][f] - g.x[j][f]
				out[d][i*n+j] += diff * diff
			}
			for d := range out {
				out[d][j*n+i] = out[d][i*n+j]
			}
		}
	}
	return out
}

// lmlObjective is the negative log posterior of the hyperparameters with its
// gradient, cached by point because gonum asks for the value and the
// gradient separately at the same point.
type lmlObjective struct {
	g     *GP
	pre   [][]float64
	lastX []float64
	lastF float64
	lastG []float64
}

func newLMLObjective(g *GP, pre [][]float64) *lmlObjective {
	return &lmlObjective{g: g, pre: pre}
}

func (o *lmlObjective) eval(h []float64) {
	if o.lastX != nil && slices.Equal(o.lastX, h) {
		return
	}
	o.lastX = slices.Clone(h)
	o.lastG = make([]float64, len(h))
	f, ok := o.g.logPosterior(h, o.pre, o.lastG)
	if !ok {
		// The line search backs off from +Inf; a zero gradient is never
		// used there.
		o.lastF = math.Inf(1)
		clear(o.lastG)
		return
	}
	o.lastF = -f
	for i := range o.lastG {
		o.lastG[i] = -o.lastG[i]
	}
}

func (o *lmlObjective) f(h []float64) float64 { o.eval(h); return o.lastF }

func (o *lmlObjective) grad(dst, h []float64) { o.eval(h); copy(dst, o.lastG) }

// logPosterior returns the log marginal likelihood of the standardised
// targets plus the log priors, minus a quadratic penalty outside the bounds,
// and its gradient into grad (if not nil). ok is false when K is not
// positive definite at h.
func (g *GP) logPosterior(h []float64, pre [][]float64, grad []float64) (float64, bool) {
	lml, ok := g.logMarginalLikelihood(h, pre, grad)
	if !ok {
		return 0, false
	}
	d := g.dims
	lp := lml
	add := func(i int, p normalPrior, b [2]float64) {
		v, dv := p.logPDF(h[i])
		// The penalty keeps L-BFGS, which knows no bounds, inside them
		// with a smooth objective; the result is clamped afterwards.
		const c = 50
		if h[i] < b[0] {
			v -= 0.5 * c * (h[i] - b[0]) * (h[i] - b[0])
			dv -= c * (h[i] - b[0])
		} else if h[i] > b[1] {
			v -= 0.5 * c * (h[i] - b[1]) * (h[i] - b[1])
			dv -= c * (h[i] - b[1])
		}
		lp += v
		if grad != nil {
			grad[i] += dv
		}
	}
	for i := range d {
		add(i, logLenPrior, logLenBounds)
	}
	add(d+hypSignal, logSignalPrior, logSignalBounds)
	add(d+hypNoise, logNoisePrior, logNoiseBounds)
	return lp, true
}

// logMarginalLikelihood is log p(y | h) and, into grad, its gradient:
// ∂/∂θ = ½ tr((ααᵀ - K⁻¹) ∂K/∂θ) with α = K⁻¹y. For Matérn 5/2,
// ∂k/∂log ℓ_d = σ² (5/3)(1 + √5 r) exp(-√5 r) r_d², where r_d² is dimension
// d's share of r², so no division by r is needed at r = 0.
func (g *GP) logMarginalLikelihood(h []float64, pre [][]float64, grad []float64) (float64, bool) {
	n, d := len(g.x), g.dims
	invL2 := make([]float64, d)
	for k := range d {
		invL2[k] = math.Exp(-2 * h[k])
	}
	s2 := math.Exp(h[d+hypSignal])
	en := math.Exp(h[d+hypNoise])
	noise := noiseFloor + en

	K := mat.NewSymDense(n, nil)
	kd := K.RawSymmetric().Data
	// dfac[i*n+j] = σ² (5/3)(1+√5r)exp(-√5r), the common factor of the
	// length-scale derivatives.
	dfac := make([]float64, n*n)
	for i := range n {
		kd[i*n+i] = s2 + noise
		for j := i + 1; j < n; j++ {
			var r2 float64
			for k := range d {
				r2 += pre[k][i*n+j] * invL2[k]
			}
			s := math.Sqrt(5 * r2)
			e := math.Exp(-s)
			kd[i*n+j] = s2 * (1 + s + s*s/3) * e
			dfac[i*n+j] = s2 * 5.0 / 3 * (1 + s) * e
		}
	}
	var chol mat.Cholesky
	if !chol.Factorize(K) {
		return 0, false
	}
	alpha := mat.NewVecDense(n, nil)
	if err := chol.SolveVecTo(alpha, mat.NewVecDense(n, slices.Clone(g.y))); err != nil {
		return 0, false
	}
	var yKy float64
	for i := range n {
		yKy += g.y[i] * alpha.AtVec(i)
	}
	lml := -0.5*yKy - 0.5*chol.LogDet() - 0.5*float64(n)*math.Log(2*math.Pi)
	if math.IsNaN(lml) || math.IsInf(lml, 0) {
		return 0, false
	}
	if grad == nil {
		return lml, true
	}
	var kinv mat.SymDense
	if err := chol.InverseTo(&kinv); err != nil {
		return 0, false
	}
	ki := kinv.RawSymmetric().Data // upper triangle valid
	a := alpha.RawVector().Data
	clear(grad[:d+2])
	var trSignal, trNoise float64
	for i := range n {
		wii := a[i]*a[i] - ki[i*n+i]
		trSignal += wii * s2
		trNoise += wii
		for j := i + 1; j < n; j++ {
			w := a[i]*a[j] - ki[i*n+j]
			// Off-diagonal pairs count twice in the trace.
			trSignal += 2 * w * kd[i*n+j]
			wf := 2 * w * dfac[i*n+j]
			for k := range d {
				grad[k] += wf * pre[k][i*n+j] * invL2[k]
			}
		}
	}
	for k := range d {
		grad[k] *= 0.5
	}
	grad[d+hypSignal] = 0.5 * trSignal
	grad[d+hypNoise] = 0.5 * trNoise * en
	return lml, true
}

// setHyper factorises K at h and keeps what prediction needs.
func (g *GP) setHyper(h []float64) error {
	n, d := len(g.x), g.dims
	g.hyper = h
	g.invLen = make([]float64, len(g.groups))
	for f, dd := range g.groups {
		g.invLen[f] = math.Exp(-h[dd])
	}
	K := mat.NewSymDense(n, nil)
	s2 := math.Exp(h[d+hypSignal])
	noise := noiseFloor + math.Exp(h[d+hypNoise])
	for i := range n {
		K.SetSym(i, i, s2+noise)
		for j := i + 1; j < n; j++ {
			K.SetSym(i, j, g.kernel(g.x[i], g.x[j]))
		}
	}
	if !g.chol.Factorize(K) {
		return errors.New("gp: kernel matrix is not positive definite")
	}
	alpha := mat.NewVecDense(n, nil)
	if err := g.chol.SolveVecTo(alpha, mat.NewVecDense(n, slices.Clone(g.y))); err != nil {
		return fmt.Errorf("gp: %w", err)
	}
	g.alpha = alpha.RawVector().Data
	g.kinv = &mat.SymDense{}
	if err := g.chol.InverseTo(g.kinv); err != nil {
		return fmt.Errorf("gp: %w", err)
	}
	return nil
}

// kernel is the signal covariance of two feature vectors (no noise).
func (g *GP) kernel(a, b []float64) float64 {
	return math.Exp(g.hyper[g.dims+hypSignal]) * Matern52(math.Sqrt(g.scaledSq(a, b)))
}

func (g *GP) scaledSq(a, b []float64) float64 {
	var r2 float64
	for f, il := range g.invLen {
		diff := (a[f] - b[f]) * il
		r2 += diff * diff
	}
	return r2
}

// Hyper returns the fitted log hyperparameters: one log length scale per
// dimension, the log signal variance, and the log of the noise variance in
// excess of the floor (standardised units). It is what FitOptions.Warm
// takes.
func (g *GP) Hyper() []float64 { return slices.Clone(g.hyper) }

// LengthScales returns the fitted length scale of every dimension, in the
// unit cube: a short one means the objective changes quickly along that
// parameter, which is what the report's parameter importance shows.
func (g *GP) LengthScales() []float64 {
	out := make([]float64, g.dims)
	for i := range out {
		out[i] = math.Exp(g.hyper[i])
	}
	return out
}

// NoiseVariance is the fitted noise variance in the targets' units.
func (g *GP) NoiseVariance() float64 {
	return (noiseFloor + math.Exp(g.hyper[g.dims+hypNoise])) * g.ySD * g.ySD
}

// Predict returns the posterior mean and variance of the latent function at
// features x, in the targets' units. The variance excludes the noise: the
// acquisition asks how uncertain the objective is, not the next trial.
func (g *GP) Predict(x []float64) (mean, variance float64) {
	m, v := g.predictStd(x, nil, nil, nil)
	return g.yMean + g.ySD*m, v * g.ySD * g.ySD
}

// predictStd predicts in standardised units. With dm and dv not nil it also
// returns the gradients of the mean and variance with respect to the
// features. kbuf is scratch of length 2n, or nil; the acquisition reuses one
// so that scoring thousands of candidates does not allocate.
func (g *GP) predictStd(x []float64, dm, dv []float64, kbuf []float64) (float64, float64) {
	n := len(g.x)
	d := g.dims
	s2 := math.Exp(g.hyper[d+hypSignal])
	if cap(kbuf) < 2*n {
		kbuf = make([]float64, 2*n)
	}
	k := kbuf[:n]
	dfac := kbuf[n : 2*n] // ∂k/∂(r²) = -σ²(5/6)(1+√5r)exp(-√5r)
	var mean float64
	for i := range n {
		r2 := g.scaledSq(x, g.x[i])
		s := math.Sqrt(5 * r2)
		e := math.Exp(-s)
		k[i] = s2 * (1 + s + s*s/3) * e
		dfac[i] = -s2 * 5.0 / 6 * (1 + s) * e
		mean += k[i] * g.alpha[i]
	}
	ki := g.kinv.RawSymmetric().Data
	// v = K⁻¹k, using the upper triangle only.
	var kKk float64
	var v []float64
	if dv != nil {
		v = make([]float64, n)
	}
	for i := range n {
		var s float64
		for j := range i {
			s += ki[j*n+i] * k[j]
		}
		for j := i; j < n; j++ {
			s += ki[i*n+j] * k[j]
		}
		kKk += k[i] * s
		if v != nil {
			v[i] = s
		}
	}
	variance := math.Max(s2-kKk, 0)
	if dm != nil {
		clear(dm)
		clear(dv)
		for i := range n {
			for f, il := range g.invLen {
				// ∂k_i/∂x_f = dfac_i · 2(x_f - X_if)/ℓ²
				dk := dfac[i] * 2 * (x[f] - g.x[i][f]) * il * il
				dm[f] += dk * g.alpha[i]
				dv[f] -= 2 * v[i] * dk
			}
		}
	}
	return mean, variance
}

// believe returns a GP with the same hyperparameters and standardisation,
// conditioned besides on the points xs at their predicted means (the
// kriging believer): the posterior mean does not change, but the variance
// at and around a pending trial collapses, so that the acquisition looks
// elsewhere for the next parallel trial. It also returns those means.
func (g *GP) believe(xs [][]float64) (*GP, []float64, error) {
	if len(xs) == 0 {
		return g, nil, nil
	}
	means := make([]float64, len(xs))
	for i, x := range xs {
		means[i], _ = g.predictStd(x, nil, nil, nil)
	}
	b := &GP{groups: g.groups, dims: g.dims, yMean: g.yMean, ySD: g.ySD}
	b.x = append(slices.Clone(g.x), xs...)
	b.y = append(slices.Clone(g.y), means...)
	if err := b.setHyper(g.hyper); err != nil {
		return nil, nil, fmt.Errorf("pending points: %w", err)
	}
	return b, means, nil
}
