package drift

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
)

// BaselineSchema identifies the baseline.json format.
const BaselineSchema = "scopewatch.baseline/v1"

// ErrInvalidBaseline is wrapped by every validation error of Load and
// BuildBaseline's inputs.
var ErrInvalidBaseline = errors.New("invalid baseline")

// Baseline is what the model did on its held-out test set (DESIGN.md §3):
// the reference the drift detectors compare live scores with.
type Baseline struct {
	Schema       string  `json:"schema"`
	ModelVersion string  `json:"model_version,omitempty"`
	Threshold    float64 `json:"threshold"`
	// TestSize is the number of test-set cases; the reference rows below are
	// a seeded subsample when the test set is larger than the cap.
	TestSize     int     `json:"test_size"`
	PositiveRate float64 `json:"positive_rate"` // predicted positive at Threshold, whole test set
	Prevalence   float64 `json:"prevalence"`    // labelled positive, whole test set
	// ReferencePrevalence is the parasitized fraction the reference rows were
	// drawn with (BaselineConfig.ReferencePrevalence), 0 when they are a
	// plain subsample of the test set.
	ReferencePrevalence float64 `json:"reference_prevalence,omitempty"`

	Quantiles []Quantile `json:"quantiles"` // of all test-set scores
	Metrics   Metrics    `json:"metrics"`

	// Calibration maps raw scores to probabilities; nil when isotonic
	// regression did not lower the cross-validated ECE.
	Calibration *Isotonic `json:"calibration"`
	ECE         ECE       `json:"ece"`

	Scores    []float64   `json:"scores"`           // reference rows: raw scores
	Labels    []int       `json:"labels"`           // reference rows: labels (1 = parasitized)
	Slides    []int       `json:"slides,omitempty"` // reference rows: slide index (0..), when known
	Embedding *Embedding  `json:"embedding"`        // nil without features
	Projected [][]float32 `json:"projected"`        // reference rows: projected embeddings (or empty)
	// Focus holds the reference rows' focus (per-crop sharpness, see
	// BaselineConfig.Focus); absent in baselines made without it, which
	// then have no focus signal.
	Focus []float64 `json:"focus,omitempty"`
	// Plausibility is the reference of the plausibility gate (which cells
	// the model can judge at all); absent in baselines made without it,
	// whose daemon then runs without the gate's colour, texture and
	// feature checks.
	Plausibility *Plausibility `json:"plausibility,omitempty"`
	// FieldPlausibility is the same for cells the daemon's segmentation
	// cuts from whole fields, which look different from crops (their own
	// border, scale and neighbours): absent, field cells go unchecked.
	FieldPlausibility *Plausibility `json:"field_plausibility,omitempty"`
	// SlideQuality is the reference of the per-slide quality gate (stain,
	// brightness, sharpness, framing of whole slides); absent in
	// baselines made without appearance statistics or whole slides.
	SlideQuality *SlideQuality `json:"slide_quality,omitempty"`

	Descriptive []DescriptiveThreshold `json:"descriptive"`
	Detector    *Calibration           `json:"detector"`

	ref         *reference
	fingerprint string
}

// Quantile is one point of the score quantile function.
type Quantile struct {
	Q float64 `json:"q"`
	V float64 `json:"v"`
}

// ECE records the cross-validated expected calibration errors that decided
// whether the isotonic map is kept.
type ECE struct {
	Raw      float64 `json:"raw"`
	Isotonic float64 `json:"isotonic"`
	Folds    int     `json:"folds"`
	Kept     bool    `json:"kept"`
}

// BaselineConfig controls BuildBaseline. Zero values take the defaults.
type BaselineConfig struct {
	ModelVersion    string
	MaxReference    int // reference rows kept (default 5000)
	BootstrapReps   int // default 1000
	Folds           int // cross-validation folds for the ECE decision (default 5)
	ProjectionDim   int // default 16
	RFFDim          int // default 64
	DescriptiveSims int // simulated windows per size for descriptive thresholds (default 400)
	// ReferencePrevalence, when > 0, draws the reference rows with this
	// fraction of parasitized cells (by label, without replacement), so that
	// a balanced crop test set can describe a stream of field cells with a
	// parasitemia of a few percent. The metrics stay those of the whole
	// test set.
	ReferencePrevalence float64
	// Slides, when given (one id per test case), makes the calibration's
	// null model resample slides rather than cells: cells of one slide are
	// alike, so a test set of S slides pins the score distribution down
	// much less than its cell count suggests, and new slides differ from it
	// by more than cell-level sampling would explain.
	Slides []string
	// Focus, when given (one value per test case), is each crop's focus
	// (a sharpness measure such as inference's variance of the Laplacian;
	// finite, >= 0) and enables the focus signal: defocus the classifier
	// copes with still shows in it.
	Focus []float64
	// Appearance, when given (one row per test case, named by
	// AppearanceNames), adds the plausibility reference, calibrated with
	// Plausibility on the test set's statistics and features (split by
	// Slides, which it then requires).
	Appearance      [][]float64
	AppearanceNames []string
	// NoPlausibility uses Appearance for the slide quality gate only.
	NoPlausibility bool
	// PlausibilityFeatures are the features the gate uses (nil: the
	// features given to BuildBaseline, which may be nil when the embedding
	// signal is off).
	PlausibilityFeatures [][]float32
	Plausibility         PlausibilityConfig
	// SlideQuality configures the per-slide quality gate, made from
	// Appearance and Slides when the test set has at least 20 slides of
	// 20 or more cells.
	SlideQuality SlideQualityConfig
	Seed         uint64
	Detector     CalibrationConfig
}

// BuildBaseline computes the baseline from the test set's scores, labels
// and (optionally, nil to disable the embedding signal) features, and
// calibrates the detectors by simulation.
func BuildBaseline(ctx context.Context, scores []float64, labels []int, features [][]float32, threshold float64, cfg BaselineConfig) (*Baseline, error) {
	if err := checkInputs(scores, labels, features, threshold); err != nil {
		return nil, err
	}
	if cfg.MaxReference == 0 {
		// The reference's own sampling error moves the run length of a
		// given baseline away from the ERT (the calibration is right on
		// average over references); a larger reference keeps it closer.
		cfg.MaxReference = 5000
	}
	if cfg.BootstrapReps == 0 {
		cfg.BootstrapReps = 1000
	}
	if cfg.Folds == 0 {
		cfg.Folds = 5
	}
	if cfg.ProjectionDim == 0 {
		cfg.ProjectionDim = 16
	}
	if cfg.RFFDim == 0 {
		cfg.RFFDim = 64
	}
	if cfg.DescriptiveSims == 0 {
		cfg.DescriptiveSims = 400
	}
	if cfg.Slides != nil && len(cfg.Slides) != len(scores) {
		return nil, fmt.Errorf("%w: %d slide ids for %d scores", ErrInvalidBaseline, len(cfg.Slides), len(scores))
	}
	if cfg.Focus != nil {
		if len(cfg.Focus) != len(scores) {
			return nil, fmt.Errorf("%w: %d focus values for %d scores", ErrInvalidBaseline, len(cfg.Focus), len(scores))
		}
		for i, f := range cfg.Focus {
			if !validFocus(f) {
				return nil, fmt.Errorf("%w: focus %d = %v: want a finite value >= 0", ErrInvalidBaseline, i, f)
			}
		}
	}
	if cfg.MaxReference < 20 {
		return nil, fmt.Errorf("%w: max reference %d: want at least 20", ErrInvalidBaseline, cfg.MaxReference)
	}
	b := &Baseline{Schema: BaselineSchema, ModelVersion: cfg.ModelVersion, Threshold: threshold, TestSize: len(scores), ReferencePrevalence: cfg.ReferencePrevalence}
	var pos, lab int
	for i, s := range scores {
		if s >= threshold {
			pos++
		}
		lab += labels[i]
	}
	b.PositiveRate = float64(pos) / float64(len(scores))
	b.Prevalence = float64(lab) / float64(len(scores))
	sorted := sortedCopy(scores)
	for i := 0; i <= 100; i++ {
		q := float64(i) / 100
		b.Quantiles = append(b.Quantiles, Quantile{Q: q, V: quantileSorted(sorted, q)})
	}
	b.Metrics = computeMetrics(scores, labels, threshold, cfg.BootstrapReps, splitmix64(cfg.Seed^0x3))
	b.ECE.Folds = cfg.Folds
	b.ECE.Raw, b.ECE.Isotonic = crossValidatedECE(scores, labels, cfg.Folds, cfg.Seed)
	if b.ECE.Isotonic < b.ECE.Raw {
		b.ECE.Kept = true
		b.Calibration = fitIsotonic(scores, labels)
	}

	rows := make([]int, len(scores))
	for i := range rows {
		rows[i] = i
	}
	switch {
	case cfg.ReferencePrevalence > 0:
		if cfg.ReferencePrevalence >= 1 {
			return nil, fmt.Errorf("%w: reference prevalence %v: want 0 < p < 1", ErrInvalidBaseline, cfg.ReferencePrevalence)
		}
		var pos, neg []int
		for _, i := range newRand(cfg.Seed, 13).Perm(len(rows)) {
			if labels[i] == 1 {
				pos = append(pos, i)
			} else {
				neg = append(neg, i)
			}
		}
		p := cfg.ReferencePrevalence
		m := min(cfg.MaxReference, int(float64(len(neg))/(1-p)), int(float64(len(pos))/p))
		np := int(math.Round(p * float64(m)))
		if m < 20 || np < 1 || m-np > len(neg) || np > len(pos) {
			return nil, fmt.Errorf("%w: reference prevalence %v leaves %d rows from %d parasitized and %d uninfected cells: want at least 20", ErrInvalidBaseline, p, m, len(pos), len(neg))
		}
		rows = append(slices.Clone(pos[:np]), neg[:m-np]...)
		slices.Sort(rows)
	case len(rows) > cfg.MaxReference:
		perm := newRand(cfg.Seed, 13).Perm(len(rows))
		rows = perm[:cfg.MaxReference]
		slices.Sort(rows)
	}
	slideIndex := map[string]int{}
	for _, i := range rows {
		b.Scores = append(b.Scores, scores[i])
		b.Labels = append(b.Labels, labels[i])
		if cfg.Focus != nil {
			b.Focus = append(b.Focus, cfg.Focus[i])
		}
		if cfg.Slides != nil {
			k, ok := slideIndex[cfg.Slides[i]]
			if !ok {
				k = len(slideIndex)
				slideIndex[cfg.Slides[i]] = k
			}
			b.Slides = append(b.Slides, k)
		}
	}
	if features != nil {
		sub := make([][]float32, len(rows))
		for k, i := range rows {
			sub[k] = features[i]
		}
		emb, z, err := newEmbedding(sub, cfg.ProjectionDim, cfg.RFFDim, cfg.Seed)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidBaseline, err)
		}
		b.Embedding, b.Projected = emb, z
	}
	dc, err := cfg.Detector.withDefaults(b.Embedding != nil, len(b.Focus) > 0)
	if err != nil {
		return nil, fmt.Errorf("%w: detector: %w", ErrInvalidBaseline, err)
	}
	if dc.Seed == 0 {
		dc.Seed = splitmix64(cfg.Seed ^ 0x5)
	}
	if cfg.Appearance != nil {
		if len(cfg.Appearance) != len(scores) || cfg.Slides == nil {
			return nil, fmt.Errorf("%w: plausibility: %d appearance rows for %d scores (and slide ids %v): want one row per score, with slide ids", ErrInvalidBaseline, len(cfg.Appearance), len(scores), cfg.Slides != nil)
		}
		pc := cfg.Plausibility
		if pc.Seed == 0 {
			pc.Seed = splitmix64(cfg.Seed ^ 0x7)
		}
		pf := cfg.PlausibilityFeatures
		if pf == nil {
			pf = features
		}
		if !cfg.NoPlausibility {
			b.Plausibility, err = BuildPlausibility(cfg.AppearanceNames, cfg.Appearance, pf, cfg.Slides, scores, threshold, pc)
			if err != nil {
				return nil, err
			}
		}
		// The quality gate needs whole slides; a test set of a few slides
		// goes without it rather than failing the baseline.
		// Only cells the model calls uninfected describe a slide's stain,
		// light and focus: parasites change a cell's colour, so that a
		// heavily infected slide would otherwise look badly stained.
		var qs [][]float64
		var qsl []string
		for i, s := range scores {
			if s < threshold {
				qs, qsl = append(qs, cfg.Appearance[i]), append(qsl, cfg.Slides[i])
			}
		}
		b.SlideQuality, err = BuildSlideQuality(cfg.AppearanceNames, qs, qsl, cfg.SlideQuality)
		if errors.Is(err, ErrNoSlideQuality) {
			b.SlideQuality = nil
		} else if err != nil {
			return nil, err
		}
	}
	b.prepare()
	b.Detector, err = calibrate(ctx, b.ref, dc)
	if err != nil {
		return nil, err
	}
	for _, w := range dc.Windows {
		b.Descriptive = append(b.Descriptive, b.simulateDescriptive(w, cfg.DescriptiveSims, splitmix64(cfg.Seed^uint64(w))))
	}
	if err := b.validate(); err != nil {
		return nil, fmt.Errorf("built baseline fails validation (a bug): %w", err)
	}
	return b, nil
}

// Recalibrate returns a copy of b whose detector thresholds are calibrated
// for cfg (for example another ERT); the rest of the baseline is shared.
func (b *Baseline) Recalibrate(ctx context.Context, cfg CalibrationConfig) (*Baseline, error) {
	dc, err := cfg.withDefaults(b.Embedding != nil, len(b.Focus) > 0)
	if err != nil {
		return nil, fmt.Errorf("%w: detector: %w", ErrInvalidBaseline, err)
	}
	if dc.Seed == 0 {
		dc.Seed = b.Detector.Seed
	}
	c := *b
	c.fingerprint = ""
	c.Detector, err = calibrate(ctx, b.ref, dc)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// WithCalibration returns a copy of b with the detector thresholds c (from
// an earlier Recalibrate of this baseline, kept by the caller), checked
// against b's references.
func (b *Baseline) WithCalibration(c *Calibration) (*Baseline, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: detector: missing", ErrInvalidBaseline)
	}
	if err := c.validate(b.Embedding != nil, len(b.Focus) > 0); err != nil {
		return nil, err
	}
	cb := *b
	cb.fingerprint = ""
	cb.Detector = c
	return &cb, nil
}

func checkInputs(scores []float64, labels []int, features [][]float32, threshold float64) error {
	if len(scores) < 20 {
		return fmt.Errorf("%w: %d scores: want at least 20", ErrInvalidBaseline, len(scores))
	}
	if len(labels) != len(scores) {
		return fmt.Errorf("%w: %d labels for %d scores", ErrInvalidBaseline, len(labels), len(scores))
	}
	if features != nil && len(features) != len(scores) {
		return fmt.Errorf("%w: %d feature rows for %d scores", ErrInvalidBaseline, len(features), len(scores))
	}
	if !(threshold > 0 && threshold < 1) {
		return fmt.Errorf("%w: threshold %v: want 0 < threshold < 1", ErrInvalidBaseline, threshold)
	}
	var pos int
	for i, s := range scores {
		if !(s >= 0 && s <= 1) {
			return fmt.Errorf("%w: score %d = %v: want a probability in [0, 1]", ErrInvalidBaseline, i, s)
		}
		if labels[i] != 0 && labels[i] != 1 {
			return fmt.Errorf("%w: label %d = %d: want 0 (uninfected) or 1 (parasitized)", ErrInvalidBaseline, i, labels[i])
		}
		pos += labels[i]
	}
	if pos == 0 || pos == len(scores) {
		return fmt.Errorf("%w: the test set has only one class (%d of %d parasitized)", ErrInvalidBaseline, pos, len(scores))
	}
	return nil
}

// prepare derives the in-memory reference from the stored fields.
func (b *Baseline) prepare() {
	for _, p := range []*Plausibility{b.Plausibility, b.FieldPlausibility} {
		if p != nil {
			p.prepare()
		}
	}
	if b.Embedding != nil {
		b.Embedding.init()
	}
	var focus []float64
	if len(b.Focus) > 0 {
		focus = b.Focus
	}
	b.ref = newReference(b.Scores, b.Threshold, b.Embedding, b.Projected, focus)
	if len(b.Slides) == len(b.Scores) {
		n := 0
		for _, k := range b.Slides {
			n = max(n, k+1)
		}
		b.ref.slideRows = make([][]int32, n)
		for i, k := range b.Slides {
			b.ref.slideRows[k] = append(b.ref.slideRows[k], int32(i))
		}
		// Slide indices need not be dense in a hand-made file; drop empty ones.
		b.ref.slideRows = slices.DeleteFunc(b.ref.slideRows, func(r []int32) bool { return len(r) == 0 })
	}
}

// UsesSignal reports whether the baseline's detector runs signal (one of
// the Signal constants).
func (b *Baseline) UsesSignal(signal string) bool {
	return slices.ContainsFunc(b.Detector.Tests, func(t TestSpec) bool { return t.Signal == signal })
}

// Fingerprint identifies the baseline's content (sha256 of its JSON), so
// that a persisted monitor state is never restored against another baseline.
func (b *Baseline) Fingerprint() string {
	if b.fingerprint == "" {
		j, _ := json.Marshal(b)
		s := sha256.Sum256(j)
		b.fingerprint = hex.EncodeToString(s[:])
	}
	return b.fingerprint
}

// Save writes b as JSON to path (atomically: temp file and rename).
func (b *Baseline) Save(path string) error { return saveJSON(path, b, true) }

func saveJSON(path string, v any, indent bool) error {
	j, err := json.Marshal(v)
	if indent {
		j, err = json.MarshalIndent(v, "", " ")
	}
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(j, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// LoadBaseline reads and validates a baseline file.
func LoadBaseline(path string) (*Baseline, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open baseline: %w", err)
	}
	defer f.Close()
	b, err := DecodeBaseline(io.LimitReader(f, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// DecodeBaseline decodes and validates a baseline strictly: unknown keys,
// trailing data, missing or inconsistent fields are errors.
func DecodeBaseline(r io.Reader) (*Baseline, error) {
	var b Baseline
	if err := decodeStrict(r, &b); err != nil {
		return nil, err
	}
	if err := b.validate(); err != nil {
		return nil, err
	}
	b.prepare()
	return &b, nil
}

// decodeStrict decodes one JSON object into v: unknown keys and trailing
// data are errors.
func decodeStrict(r io.Reader, v any) error {
	d := json.NewDecoder(r)
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidBaseline, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after the JSON object", ErrInvalidBaseline)
	}
	return nil
}

// DecodeBaselineBytes is DecodeBaseline on a byte slice.
func DecodeBaselineBytes(p []byte) (*Baseline, error) { return DecodeBaseline(bytes.NewReader(p)) }

func (b *Baseline) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidBaseline, fmt.Sprintf(format, a...))
	}
	if b.Schema != BaselineSchema {
		return bad("schema %q: want %q", b.Schema, BaselineSchema)
	}
	if !(b.Threshold > 0 && b.Threshold < 1) {
		return bad("threshold %v: want 0 < threshold < 1", b.Threshold)
	}
	if len(b.Scores) < 20 || len(b.Scores) > 1<<20 {
		return bad("scores: %d values, want 20..1048576", len(b.Scores))
	}
	if b.TestSize < len(b.Scores) {
		return bad("test_size %d is smaller than the %d reference scores", b.TestSize, len(b.Scores))
	}
	if len(b.Labels) != len(b.Scores) {
		return bad("labels: %d values for %d scores", len(b.Labels), len(b.Scores))
	}
	if len(b.Slides) != 0 && len(b.Slides) != len(b.Scores) {
		return bad("slides: %d values for %d scores", len(b.Slides), len(b.Scores))
	}
	for _, k := range b.Slides {
		if k < 0 || k >= len(b.Scores) {
			return bad("slides: index %d out of range", k)
		}
	}
	if len(b.Focus) != 0 && len(b.Focus) != len(b.Scores) {
		return bad("focus: %d values for %d scores", len(b.Focus), len(b.Scores))
	}
	for i, f := range b.Focus {
		if !validFocus(f) {
			return bad("focus[%d] = %v: want a finite value >= 0", i, f)
		}
	}
	for i, s := range b.Scores {
		if !(s >= 0 && s <= 1) {
			return bad("scores[%d] = %v: want [0, 1]", i, s)
		}
		if b.Labels[i] != 0 && b.Labels[i] != 1 {
			return bad("labels[%d] = %d: want 0 or 1", i, b.Labels[i])
		}
	}
	for _, p := range []struct {
		name string
		v    float64
	}{{"positive_rate", b.PositiveRate}, {"prevalence", b.Prevalence}, {"reference_prevalence", b.ReferencePrevalence}, {"ece.raw", b.ECE.Raw}, {"ece.isotonic", b.ECE.Isotonic}} {
		if !(p.v >= 0 && p.v <= 1) {
			return bad("%s %v: want [0, 1]", p.name, p.v)
		}
	}
	for i, q := range b.Quantiles {
		if !(q.Q >= 0 && q.Q <= 1) || !finite(q.V) || (i > 0 && (q.Q <= b.Quantiles[i-1].Q || q.V < b.Quantiles[i-1].V)) {
			return bad("quantiles[%d] = %+v: want q in [0,1], both ascending", i, q)
		}
	}
	m := b.Metrics
	for _, iv := range []struct {
		name string
		v    Interval
	}{{"accuracy", m.Accuracy}, {"sensitivity", m.Sensitivity}, {"specificity", m.Specificity}, {"auc", m.AUC}} {
		if !(iv.v.Lo >= 0 && iv.v.Lo <= iv.v.Value && iv.v.Value <= iv.v.Hi && iv.v.Hi <= 1) {
			return bad("metrics.%s %+v: want 0 <= lo <= value <= hi <= 1", iv.name, iv.v)
		}
	}
	if c := b.Calibration; c != nil {
		if len(c.X) == 0 || len(c.X) != len(c.Y) {
			return bad("calibration: %d knots x, %d y: want the same non-zero number", len(c.X), len(c.Y))
		}
		for i := range c.X {
			if !finite(c.X[i]) || !(c.Y[i] >= 0 && c.Y[i] <= 1) || (i > 0 && (c.X[i] < c.X[i-1] || c.Y[i] < c.Y[i-1])) {
				return bad("calibration knot %d (%v, %v): want x ascending, y ascending in [0, 1]", i, c.X[i], c.Y[i])
			}
		}
	}
	if b.Embedding != nil {
		if err := b.Embedding.validate(); err != nil {
			return bad("%v", err)
		}
		if len(b.Projected) != len(b.Scores) {
			return bad("projected: %d rows for %d scores", len(b.Projected), len(b.Scores))
		}
		for i, z := range b.Projected {
			if len(z) != b.Embedding.Dim {
				return bad("projected[%d]: %d values, want %d", i, len(z), b.Embedding.Dim)
			}
			for _, v := range z {
				if !finite(float64(v)) {
					return bad("projected[%d]: %v is not finite", i, v)
				}
			}
		}
	} else if len(b.Projected) != 0 {
		return bad("projected rows without an embedding")
	}
	for _, p := range []*Plausibility{b.Plausibility, b.FieldPlausibility} {
		if p == nil {
			continue
		}
		if err := p.validate(); err != nil {
			return err
		}
	}
	if b.SlideQuality != nil {
		if err := b.SlideQuality.validate(); err != nil {
			return err
		}
	}
	for i, d := range b.Descriptive {
		if err := d.validate(); err != nil {
			return bad("descriptive[%d]: %v", i, err)
		}
	}
	if b.Detector == nil {
		return bad("detector: missing")
	}
	return b.Detector.validate(b.Embedding != nil, len(b.Focus) > 0)
}

func (c *Calibration) validate(haveEmbedding, haveFocus bool) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: detector: %s", ErrInvalidBaseline, fmt.Sprintf(format, a...))
	}
	if c.ERT < 2 || c.WarnERT < 2 || c.WarnERT > c.ERT {
		return bad("ert %d, warn_ert %d: want 2 <= warn_ert <= ert", c.ERT, c.WarnERT)
	}
	if !validNull(c.Null) {
		return bad("null %q: want %q, %q or %q", c.Null, NullExchangeable, NullBootstrap, NullSlides)
	}
	if c.Null == NullSlides && c.SlideCells != [2]int{} && (c.SlideCells[0] < 10 || c.SlideCells[1] < c.SlideCells[0] || c.SlideCells[1] > 1000000) {
		return bad("slide_cells %v: want 10 <= min <= max <= 1000000", c.SlideCells)
	}
	if len(c.Tests) == 0 || len(c.Tests) > 64 {
		return bad("%d tests: want 1..64", len(c.Tests))
	}
	if len(c.Blocks) == 0 || len(c.Blocks) > 100000 || c.Blocks[0] != 1 {
		return bad("blocks: want a non-empty ascending list starting at 1")
	}
	for i := 1; i < len(c.Blocks); i++ {
		if c.Blocks[i] <= c.Blocks[i-1] {
			return bad("blocks[%d] = %d: want ascending", i, c.Blocks[i])
		}
	}
	for i, t := range c.Tests {
		switch t.Signal {
		case SignalScores, SignalRate:
		case SignalEmbedding:
			if !haveEmbedding {
				return bad("tests[%d]: %s without an embedding reference", i, t.Signal)
			}
		case SignalFocus:
			if !haveFocus {
				return bad("tests[%d]: %s without a focus reference", i, t.Signal)
			}
		default:
			return bad("tests[%d].signal %q: unknown", i, t.Signal)
		}
		if t.Window < 2 || t.Window > 100000 {
			return bad("tests[%d].window %d: want 2..100000", i, t.Window)
		}
		if slices.Contains(c.Tests[:i], t) {
			return bad("tests[%d]: %s on window %d listed twice", i, t.Signal, t.Window)
		}
	}
	if len(c.Start) != len(c.Tests) || len(c.Warn) != len(c.Tests) || len(c.Alarm) != len(c.Tests) {
		return bad("start/warn/alarm: want one entry per test (%d)", len(c.Tests))
	}
	for i := range c.Tests {
		if c.Start[i] < 0 || c.Start[i] >= len(c.Blocks) {
			return bad("start[%d] = %d: want a block index below %d", i, c.Start[i], len(c.Blocks))
		}
		if len(c.Warn[i]) != len(c.Blocks) || len(c.Alarm[i]) != len(c.Blocks) {
			return bad("thresholds of test %d: want %d blocks", i, len(c.Blocks))
		}
		for j := range c.Blocks {
			for _, v := range []float64{c.Warn[i][j], c.Alarm[i][j]} {
				if !finite(v) || math.Abs(v) > 1e12 {
					return bad("threshold of test %d block %d = %v: want finite", i, j, v)
				}
			}
		}
	}
	return nil
}
