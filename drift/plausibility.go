package drift

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Plausibility is the reference of the plausibility gate: what nominal red
// cells look like to the model, so that an image that is not one (noise, a
// solid colour, a photograph, an empty field, a blurred blob) is refused
// with the reason instead of given a class.
//
// It holds one Stratum per predicted class (p(parasitized) below or at
// least Threshold), each calibrated on its own cells to FalseRejection:
// parasitized cells are rarer and more varied than uninfected ones, and
// one reference for both put them in its tails, so that it refused
// infected cells several times more often than uninfected ones and
// lowered the parasitemia it let through.
type Plausibility struct {
	FalseRejection float64 `json:"false_rejection"`
	// Threshold is the p(parasitized) that splits the strata: the model's
	// decision threshold the reference was made with (the manifest's, not a
	// site's override, so that a cell meets the stratum it was calibrated
	// in).
	Threshold   float64  `json:"threshold"`
	Uninfected  *Stratum `json:"uninfected"`
	Parasitized *Stratum `json:"parasitized"`
}

// Stratum is the reference for the cells of one predicted class, in two
// parts, both calibrated on slide-disjoint held-out nominal cells to a
// stated share of false rejections:
//
//   - Stats: a range per image statistic (colour, texture, layout; named by
//     the producer, such as inference.AppearanceNames). The backbone's
//     features alone miss solid colours and white images, which land near
//     nominal cells in feature space.
//   - Features: the Mahalanobis distance of the backbone's features to the
//     nominal cells (shrunk covariance), which sees what the few statistics
//     cannot.
//
// A cell is plausible when every statistic is in its range and its distance
// is at most the threshold.
type Stratum struct {
	// FalseRejection is the target share of nominal cells refused by the
	// whole stratum (half for the statistics, half for the features, or
	// all for the statistics without features).
	FalseRejection float64 `json:"false_rejection"`
	// Cells and Slides count the nominal cells and slides it was made
	// from; CalibrationRejected is the share of the calibration part (the
	// slides not used to fit) that it refuses.
	Cells               int     `json:"cells"`
	Slides              int     `json:"slides"`
	CalibrationRejected float64 `json:"calibration_rejected"`

	Stats    []StatRange  `json:"stats"`
	Features *FeatureGate `json:"features,omitempty"`

	index map[string]int
}

// StatRange is the accepted range of one statistic, inclusive.
type StatRange struct {
	Name string  `json:"name"`
	Lo   float64 `json:"lo"`
	Hi   float64 `json:"hi"`
}

// FeatureGate is a Mahalanobis distance to nominal features: mean, and the
// packed lower-triangular Cholesky factor (row by row) of their covariance
// shrunk towards a multiple of the identity (the sample covariance of a few
// thousand 576-d rows is near singular).
type FeatureGate struct {
	Dim       int       `json:"dim"`
	Mean      []float32 `json:"mean"`
	Chol      []float32 `json:"chol"`
	Shrinkage float64   `json:"shrinkage"`
	Threshold float64   `json:"threshold"`
}

// ErrImplausible is wrapped by the refusal of a cell that fails the gate.
var ErrImplausible = errors.New("rejected")

// Refusal says which check refused a cell and by how much.
type Refusal struct {
	Check  string  // statistic name, or "feature_distance"
	Value  float64 // the cell's value
	Lo, Hi float64 // the accepted range (Lo = 0 for the distance)
}

func (r *Refusal) Error() string {
	if r.Check == FeatureDistance {
		return fmt.Sprintf("rejected: %s %.4g above the reference limit %.4g (Mahalanobis distance of the backbone features to nominal red cells): not a red blood cell the model can judge",
			r.Check, r.Value, r.Hi)
	}
	return fmt.Sprintf("rejected: %s %.4g outside the reference range %.4g..%.4g of nominal red cells: not a red blood cell the model can judge",
		r.Check, r.Value, r.Lo, r.Hi)
}

func (r *Refusal) Unwrap() error { return ErrImplausible }

// FeatureDistance is the Refusal.Check of the feature test.
const FeatureDistance = "feature_distance"

// PlausibilityConfig controls BuildPlausibility.
type PlausibilityConfig struct {
	// FalseRejection is the target share of nominal cells refused
	// (default 0.005).
	FalseRejection float64
	// Holdout is the share of slides kept out of the fit to calibrate the
	// thresholds on (default 0.3).
	Holdout float64
	// Shrinkage is the share of the mean variance added to the covariance's
	// diagonal (default 0.01, as scripts/ood/mahalanobis measured).
	Shrinkage float64
	Seed      uint64
}

// BuildPlausibility calibrates the gate on nominal cells: names the
// statistics, stats one row of values per cell, features one row per cell
// (nil: statistics only), slides one id per cell (the fit and calibration
// parts are split by slide, because cells of one slide are alike and a
// threshold set on the slides it was fitted on would refuse more cells of
// new slides than it promises), scores each cell's p(parasitized), which
// with threshold puts it in a stratum.
func BuildPlausibility(names []string, stats [][]float64, features [][]float32, slides []string, scores []float64, threshold float64, cfg PlausibilityConfig) (*Plausibility, error) {
	if len(scores) != len(stats) || len(slides) != len(stats) || (features != nil && len(features) != len(stats)) || !(threshold > 0 && threshold < 1) {
		return nil, fmt.Errorf("%w: plausibility: %d scores, %d slide ids and %d feature rows for %d cells, threshold %v: want one of each per cell and 0 < threshold < 1",
			ErrInvalidBaseline, len(scores), len(slides), len(features), len(stats), threshold)
	}
	p := &Plausibility{Threshold: threshold}
	for _, pos := range []bool{false, true} {
		var st [][]float64
		var fe [][]float32
		var sl []string
		for i, sc := range scores {
			if (sc >= threshold) != pos {
				continue
			}
			st, sl = append(st, stats[i]), append(sl, slides[i])
			if features != nil {
				fe = append(fe, features[i])
			}
		}
		name := map[bool]string{false: "uninfected", true: "parasitized"}[pos]
		s, err := buildStratum(names, st, fe, sl, cfg)
		if err != nil {
			return nil, fmt.Errorf("%w (cells predicted %s)", err, name)
		}
		if pos {
			p.Parasitized = s
		} else {
			p.Uninfected = s
		}
	}
	p.FalseRejection = p.Uninfected.FalseRejection
	p.prepare()
	return p, nil
}

func buildStratum(names []string, stats [][]float64, features [][]float32, slides []string, cfg PlausibilityConfig) (*Stratum, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: plausibility: %s", ErrInvalidBaseline, fmt.Sprintf(format, a...))
	}
	if cfg.FalseRejection == 0 {
		cfg.FalseRejection = 0.005
	}
	if cfg.Holdout == 0 {
		cfg.Holdout = 0.3
	}
	if cfg.Shrinkage == 0 {
		cfg.Shrinkage = 0.01
	}
	if !(cfg.FalseRejection > 0 && cfg.FalseRejection < 0.5) || !(cfg.Holdout > 0 && cfg.Holdout < 1) || !(cfg.Shrinkage > 0 && cfg.Shrinkage <= 1) {
		return nil, bad("false rejection %v, holdout %v, shrinkage %v: want 0 < fr < 0.5, 0 < holdout < 1, 0 < shrinkage <= 1", cfg.FalseRejection, cfg.Holdout, cfg.Shrinkage)
	}
	if len(names) == 0 || len(stats) != len(slides) || (features != nil && len(features) != len(stats)) {
		return nil, bad("%d names, %d stat rows, %d feature rows, %d slide ids: want names and one row and slide id per cell", len(names), len(stats), len(features), len(slides))
	}
	for i, r := range stats {
		if len(r) != len(names) {
			return nil, bad("stats row %d has %d values for %d names", i, len(r), len(names))
		}
		for j, v := range r {
			if !finite(v) {
				return nil, bad("stats row %d: %s = %v is not finite", i, names[j], v)
			}
		}
	}
	// Slides are assigned to the calibration part by a seeded hash of
	// their id, so that the split does not depend on row order.
	var fit, cal []int
	slideSet := map[string]bool{}
	for i, s := range slides {
		slideSet[s] = true
		h := fnv.New64a()
		h.Write([]byte(strconv.FormatUint(cfg.Seed, 10) + "/" + s))
		if float64(splitmix64(h.Sum64())>>11)/(1<<53) < cfg.Holdout {
			cal = append(cal, i)
		} else {
			fit = append(fit, i)
		}
	}
	const minRows = 200
	if len(fit) < minRows || len(cal) < minRows {
		return nil, bad("%d cells of %d slides leave %d to fit and %d to calibrate: want at least %d of each", len(stats), len(slideSet), len(fit), len(cal), minRows)
	}
	p := &Stratum{FalseRejection: cfg.FalseRejection, Cells: len(stats), Slides: len(slideSet)}
	statBudget := cfg.FalseRejection
	var dist []float64 // calibration rows' feature distances
	if features != nil {
		statBudget = cfg.FalseRejection / 2
		fg, err := fitFeatureGate(features, fit, cfg.Shrinkage)
		if err != nil {
			return nil, bad("%v", err)
		}
		dist = make([]float64, len(cal))
		for k, i := range cal {
			dist[k] = fg.distance(features[i])
		}
		s := sortedCopy(dist)
		fg.Threshold = quantileSorted(s, 1-cfg.FalseRejection/2)
		p.Features = fg
	}
	p.Stats = fitStatRanges(names, stats, fit, cal, statBudget)
	p.prepare()
	var rejected int
	for k, i := range cal {
		if p.checkStats(stats[i]) != nil || (dist != nil && dist[k] > p.Features.Threshold) {
			rejected++
		}
	}
	p.CalibrationRejected = float64(rejected) / float64(len(cal))
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("built plausibility reference fails validation (a bug): %w", err)
	}
	return p, nil
}

// fitStatRanges sets every statistic's range from the fit rows' 0.1% and
// 99.9% quantiles, widened by the same factor k of their distance to the
// median for all statistics, with the smallest k that refuses at most
// budget of the calibration rows. One factor for all keeps the ranges in
// proportion to each statistic's spread; calibrating it jointly counts a
// cell that fails several statistics once.
func fitStatRanges(names []string, stats [][]float64, fit, cal []int, budget float64) []StatRange {
	type q3 struct{ lo, med, hi float64 }
	qs := make([]q3, len(names))
	col := make([]float64, len(fit))
	for j := range names {
		for k, i := range fit {
			col[k] = stats[i][j]
		}
		slices.Sort(col)
		qs[j] = q3{quantileSorted(col, 0.001), quantileSorted(col, 0.5), quantileSorted(col, 0.999)}
	}
	ranges := func(k float64) []StatRange {
		out := make([]StatRange, len(names))
		for j, q := range qs {
			out[j] = StatRange{Name: names[j], Lo: q.lo - k*(q.med-q.lo), Hi: q.hi + k*(q.hi-q.med)}
		}
		return out
	}
	share := func(r []StatRange) float64 {
		var n int
		for _, i := range cal {
			for j, v := range stats[i] {
				if v < r[j].Lo || v > r[j].Hi {
					n++
					break
				}
			}
		}
		return float64(n) / float64(len(cal))
	}
	lo, hi := 0.0, 1.0
	if share(ranges(lo)) <= budget {
		return ranges(lo)
	}
	for share(ranges(hi)) > budget && hi < 64 {
		hi *= 2
	}
	for range 40 {
		mid := (lo + hi) / 2
		if share(ranges(mid)) <= budget {
			hi = mid
		} else {
			lo = mid
		}
	}
	return ranges(hi)
}

func fitFeatureGate(features [][]float32, rows []int, shrink float64) (*FeatureGate, error) {
	d := len(features[rows[0]])
	if d == 0 || d > 4096 {
		return nil, fmt.Errorf("features: %d values per row, want 1..4096", d)
	}
	mean := make([]float64, d)
	for _, i := range rows {
		if len(features[i]) != d {
			return nil, fmt.Errorf("features row %d: %d values, want %d", i, len(features[i]), d)
		}
		for j, v := range features[i] {
			if !finite(float64(v)) {
				return nil, fmt.Errorf("features row %d: %v is not finite", i, v)
			}
			mean[j] += float64(v)
		}
	}
	for j := range mean {
		mean[j] /= float64(len(rows))
	}
	// Covariance, lower triangle, row-major dense (d x d) during the fit.
	cov := make([]float64, d*d)
	x := make([]float64, d)
	for _, i := range rows {
		for j, v := range features[i] {
			x[j] = float64(v) - mean[j]
		}
		for a := range d {
			xa := x[a]
			row := cov[a*d : a*d+a+1]
			for b := range row {
				row[b] += xa * x[b]
			}
		}
	}
	var tr float64
	for a := range d {
		for b := 0; b <= a; b++ {
			cov[a*d+b] /= float64(len(rows) - 1)
		}
		tr += cov[a*d+a]
	}
	for a := range d {
		cov[a*d+a] += shrink * tr / float64(d)
	}
	if !(tr > 0) {
		return nil, fmt.Errorf("features have no variance")
	}
	// In-place Cholesky (lower), then packed.
	for a := range d {
		for b := 0; b <= a; b++ {
			s := cov[a*d+b]
			for k := range b {
				s -= cov[a*d+k] * cov[b*d+k]
			}
			if a == b {
				if !(s > 0) {
					return nil, fmt.Errorf("shrunk feature covariance is not positive definite")
				}
				cov[a*d+a] = math.Sqrt(s)
			} else {
				cov[a*d+b] = s / cov[b*d+b]
			}
		}
	}
	fg := &FeatureGate{Dim: d, Shrinkage: shrink, Mean: make([]float32, d), Chol: make([]float32, 0, d*(d+1)/2)}
	for j, m := range mean {
		fg.Mean[j] = float32(m)
	}
	for a := range d {
		for b := 0; b <= a; b++ {
			fg.Chol = append(fg.Chol, float32(cov[a*d+b]))
		}
	}
	// The distances (and so the threshold) are computed from the stored
	// float32 values, as after a reload.
	return fg, nil
}

// distance is the Mahalanobis distance of f: |L^-1 (f - mean)|, by forward
// substitution on the packed factor (d^2/2 multiply-adds), accumulated in
// float64 from the stored float32 values: the daemon keeps four 576-d
// factors, and float64 copies would cost another 5 MB of its memory
// budget.
func (g *FeatureGate) distance(f []float32) float64 {
	d := g.Dim
	y := make([]float64, d)
	var sum float64
	off := 0
	for a := range d {
		s := float64(f[a]) - float64(g.Mean[a])
		row := g.Chol[off : off+a+1]
		for k := range a {
			s -= float64(row[k]) * y[k]
		}
		y[a] = s / float64(row[a])
		sum += y[a] * y[a]
		off += a + 1
	}
	return math.Sqrt(sum)
}

func (p *Stratum) prepare() {
	p.index = make(map[string]int, len(p.Stats))
	for j, s := range p.Stats {
		p.index[s.Name] = j
	}
}

// StatNames lists the statistics the gate checks, in its order.
func (p *Stratum) StatNames() []string {
	out := make([]string, len(p.Stats))
	for j, s := range p.Stats {
		out[j] = s.Name
	}
	return out
}

// HasFeatures reports whether the gate checks the backbone's features.
func (p *Stratum) HasFeatures() bool { return p.Features != nil }

// Check judges one cell: stats in StatNames order, features (ignored
// without a feature reference; required with one). It returns nil for a
// plausible cell, else a *Refusal wrapping ErrImplausible, or an error for
// inputs of the wrong shape (a caller's bug, never a class).
func (p *Stratum) Check(stats []float64, features []float32) error {
	if len(stats) != len(p.Stats) {
		return fmt.Errorf("plausibility: %d statistics for a reference of %d", len(stats), len(p.Stats))
	}
	if err := p.checkStats(stats); err != nil {
		return err
	}
	if p.Features == nil {
		return nil
	}
	if len(features) != p.Features.Dim {
		return fmt.Errorf("plausibility: %d features for a reference of %d", len(features), p.Features.Dim)
	}
	for _, v := range features {
		if !finite(float64(v)) {
			return &Refusal{Check: FeatureDistance, Value: math.Inf(1), Hi: p.Features.Threshold}
		}
	}
	if d := p.Features.distance(features); !(d <= p.Features.Threshold) {
		return &Refusal{Check: FeatureDistance, Value: d, Hi: p.Features.Threshold}
	}
	return nil
}

// Distance is the feature distance of a cell (for measurements); NaN
// without a feature reference or for a row of the wrong length.
func (p *Stratum) Distance(features []float32) float64 {
	if p.Features == nil || len(features) != p.Features.Dim {
		return math.NaN()
	}
	return p.Features.distance(features)
}

func (p *Stratum) checkStats(stats []float64) error {
	for j, r := range p.Stats {
		// NaN fails too: a statistic that cannot be measured is no evidence
		// of a cell.
		if v := stats[j]; !(v >= r.Lo && v <= r.Hi) {
			return &Refusal{Check: r.Name, Value: v, Lo: r.Lo, Hi: r.Hi}
		}
	}
	return nil
}

func (p *Stratum) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: plausibility: %s", ErrInvalidBaseline, fmt.Sprintf(format, a...))
	}
	if !(p.FalseRejection > 0 && p.FalseRejection < 0.5) {
		return bad("false_rejection %v: want 0 < value < 0.5", p.FalseRejection)
	}
	if !(p.CalibrationRejected >= 0 && p.CalibrationRejected <= 1) || p.Cells < 0 || p.Slides < 0 {
		return bad("cells %d, slides %d, calibration_rejected %v: want counts >= 0 and a share in [0, 1]", p.Cells, p.Slides, p.CalibrationRejected)
	}
	if len(p.Stats) == 0 || len(p.Stats) > 64 {
		return bad("%d stats: want 1..64", len(p.Stats))
	}
	for j, s := range p.Stats {
		if s.Name == "" || len(s.Name) > 64 || strings.ContainsFunc(s.Name, func(r rune) bool { return r < 0x20 || r > 0x7e }) {
			return bad("stats[%d].name %q: want 1..64 printable ASCII characters", j, s.Name)
		}
		if !finite(s.Lo) || !finite(s.Hi) || s.Lo > s.Hi {
			return bad("stats[%d] (%s) range %v..%v: want finite lo <= hi", j, s.Name, s.Lo, s.Hi)
		}
		if slices.ContainsFunc(p.Stats[:j], func(o StatRange) bool { return o.Name == s.Name }) {
			return bad("stats[%d]: %s listed twice", j, s.Name)
		}
	}
	if g := p.Features; g != nil {
		if g.Dim < 1 || g.Dim > 4096 || len(g.Mean) != g.Dim || len(g.Chol) != g.Dim*(g.Dim+1)/2 {
			return bad("features: dim %d with %d mean and %d chol values: want 1..4096, dim and dim*(dim+1)/2", g.Dim, len(g.Mean), len(g.Chol))
		}
		if !(g.Threshold > 0) || !finite(g.Threshold) || !(g.Shrinkage > 0 && g.Shrinkage <= 1) {
			return bad("features: threshold %v, shrinkage %v: want a finite threshold > 0, 0 < shrinkage <= 1", g.Threshold, g.Shrinkage)
		}
		for _, v := range g.Mean {
			if !finite(float64(v)) {
				return bad("features.mean: %v is not finite", v)
			}
		}
		off := 0
		for a := range g.Dim {
			for b := 0; b <= a; b++ {
				v := g.Chol[off+b]
				// The diagonal of a Cholesky factor is positive; anything
				// else would divide by zero or flip the distance.
				if !finite(float64(v)) || (a == b && !(v > 0)) {
					return bad("features.chol[%d][%d] = %v: want finite, diagonal > 0", a, b, v)
				}
			}
			off += a + 1
		}
	}
	return nil
}

func (p *Plausibility) prepare() {
	p.Uninfected.prepare()
	p.Parasitized.prepare()
}

func (p *Plausibility) validate() error {
	if !(p.Threshold > 0 && p.Threshold < 1) || p.Uninfected == nil || p.Parasitized == nil {
		return fmt.Errorf("%w: plausibility: threshold %v with strata %v/%v: want 0 < threshold < 1 and both uninfected and parasitized", ErrInvalidBaseline, p.Threshold, p.Uninfected != nil, p.Parasitized != nil)
	}
	if !(p.FalseRejection > 0 && p.FalseRejection < 0.5) {
		return fmt.Errorf("%w: plausibility: false_rejection %v: want 0 < value < 0.5", ErrInvalidBaseline, p.FalseRejection)
	}
	for _, s := range []*Stratum{p.Uninfected, p.Parasitized} {
		if err := s.validate(); err != nil {
			return err
		}
	}
	if !slices.Equal(p.Uninfected.StatNames(), p.Parasitized.StatNames()) || (p.Uninfected.Features == nil) != (p.Parasitized.Features == nil) ||
		(p.Uninfected.Features != nil && p.Uninfected.Features.Dim != p.Parasitized.Features.Dim) {
		return fmt.Errorf("%w: plausibility: the strata check different statistics or features", ErrInvalidBaseline)
	}
	return nil
}

// Stratum is the reference a cell with p(parasitized) pp is judged by.
func (p *Plausibility) Stratum(pp float64) *Stratum {
	if pp >= p.Threshold {
		return p.Parasitized
	}
	return p.Uninfected
}

// Check judges one cell (see Stratum.Check) by the stratum of its
// p(parasitized) pp.
func (p *Plausibility) Check(stats []float64, features []float32, pp float64) error {
	return p.Stratum(pp).Check(stats, features)
}

// StatNames lists the statistics the gate checks, in its order.
func (p *Plausibility) StatNames() []string { return p.Uninfected.StatNames() }

// HasFeatures reports whether the gate checks the backbone's features.
func (p *Plausibility) HasFeatures() bool { return p.Uninfected.HasFeatures() }

// Cells is the number of nominal cells the reference was made from.
func (p *Plausibility) Cells() int { return p.Uninfected.Cells + p.Parasitized.Cells }

// CalibrationRejected is the share of the calibration cells refused, both
// strata together.
func (p *Plausibility) CalibrationRejected() float64 {
	u, q := p.Uninfected, p.Parasitized
	return (u.CalibrationRejected*float64(u.Cells) + q.CalibrationRejected*float64(q.Cells)) / float64(u.Cells+q.Cells)
}

// PlausibilitySchema identifies a plausibility reference kept in its own
// file, beside a bundle whose baseline.json has none (a bundle that cannot
// be re-sealed keeps its signature; the file names the bundle it belongs to).
const PlausibilitySchema = "scopewatch.plausibility/v1"

// PlausibilityFile is a plausibility reference in its own file.
type PlausibilityFile struct {
	Schema       string `json:"schema"`
	ModelVersion string `json:"model_version"`
	// ModelIdentity is the sha256 of the bundle's manifest.json: a
	// reference is applied only to the model it was calibrated on.
	ModelIdentity string        `json:"model_identity"`
	Plausibility  *Plausibility `json:"plausibility"`
	// Field is the reference for segmented field cells (see
	// Baseline.FieldPlausibility); absent, field cells go unchecked.
	Field *Plausibility `json:"field,omitempty"`
}

// DecodePlausibilityFile decodes and validates a plausibility file strictly
// (unknown keys, trailing data, missing fields are errors).
func DecodePlausibilityFile(r io.Reader) (*PlausibilityFile, error) {
	var f PlausibilityFile
	if err := decodeStrict(r, &f); err != nil {
		return nil, err
	}
	if f.Schema != PlausibilitySchema {
		return nil, fmt.Errorf("%w: schema %q: want %q", ErrInvalidBaseline, f.Schema, PlausibilitySchema)
	}
	if len(f.ModelIdentity) != 64 || strings.Trim(f.ModelIdentity, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("%w: model_identity %q: want the manifest's sha256 (64 lowercase hex digits)", ErrInvalidBaseline, f.ModelIdentity)
	}
	if f.Plausibility == nil {
		return nil, fmt.Errorf("%w: plausibility: missing", ErrInvalidBaseline)
	}
	for _, p := range []*Plausibility{f.Plausibility, f.Field} {
		if p == nil {
			continue
		}
		if err := p.validate(); err != nil {
			return nil, err
		}
		p.prepare()
	}
	return &f, nil
}

// LoadBaselinePlausibility reads only the plausibility references of a
// baseline file (nil, nil when it has none), validated: the gate needs
// them at every model load, and decoding the rest of a baseline (40,000
// reference rows in the shipped one) would cost the daemon tens of
// megabytes for nothing. The file's integrity is the bundle's business
// (its hash is in the signed manifest).
func LoadBaselinePlausibility(path string) (crop, field *Plausibility, err error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open baseline: %w", err)
	}
	defer fh.Close()
	var b struct {
		Plausibility      *Plausibility `json:"plausibility"`
		FieldPlausibility *Plausibility `json:"field_plausibility"`
	}
	if err := json.NewDecoder(io.LimitReader(fh, 64<<20)).Decode(&b); err != nil {
		return nil, nil, fmt.Errorf("%s: %w: %w", path, ErrInvalidBaseline, err)
	}
	for _, p := range []*Plausibility{b.Plausibility, b.FieldPlausibility} {
		if p == nil {
			continue
		}
		if err := p.validate(); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		p.prepare()
	}
	return b.Plausibility, b.FieldPlausibility, nil
}

// LoadPlausibilityFile reads and validates a plausibility file.
func LoadPlausibilityFile(path string) (*PlausibilityFile, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open plausibility reference: %w", err)
	}
	defer fh.Close()
	f, err := DecodePlausibilityFile(io.LimitReader(fh, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// Save writes f as JSON to path (atomically: temp file and rename),
// unindented: two 576-d Cholesky factors are 330,000 numbers, and one per
// line would double the file.
func (f *PlausibilityFile) Save(path string) error {
	return saveJSON(path, f, false)
}
