package daemon

import (
	"context"
	"errors"
	"fmt"
	"image"
	"log/slog"
	"math"
	"sync/atomic"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/config"
)

// modelAnalyzer is the analyzer over the inference package: a verified
// bundle, its classifier and (for fields) segmentation.
type modelAnalyzer struct {
	bundle       *inference.Bundle
	clf          *inference.Classifier
	fieldMinSide int
	manifestThr  float64
	threshold    atomic.Uint64 // float64 bits; 0 means the manifest's
	fields       fieldAnalyzer
	focus        bool // the classifier measures each crop's focus
	gate         *PlausibilityGate
	// keepFeatures: the embedding drift detector wants each crop's
	// features (the gate may need them even when it does not).
	keepFeatures bool
	metrics      *serveMetrics
}

// fieldAnalyzer segments a whole field into cells and classifies each.
type fieldAnalyzer interface {
	AnalyzeField(ctx context.Context, data []byte) (w, h int, cells []fieldCell, err error)
}

type fieldCell struct {
	Box        image.Rectangle
	P          float64
	Focus      float64
	Appearance inference.Appearance
	Features   []float32
}

var (
	_ analyzer       = (*modelAnalyzer)(nil)
	_ baselineSource = (*modelAnalyzer)(nil)
	_ thresholded    = (*modelAnalyzer)(nil)
)

// CheckModel loads the configured model as serve would (bundle, signature,
// ONNX Runtime, a session) and closes it again: what `config check` runs, so
// that a wrong path or a refused bundle shows before a failed start.
func CheckModel(cfg config.Config, log *slog.Logger) (version string, err error) {
	a, err := openAnalyzer(cfg, log)
	if err != nil {
		return "", fmt.Errorf("model %s: %w", cfg.Model.Path, err)
	}
	defer a.Close()
	return a.ModelVersion(), nil
}

// openAnalyzer loads and verifies the configured model bundle.
func openAnalyzer(cfg config.Config, log *slog.Logger) (analyzer, error) {
	keys, err := trustedKeys(cfg)
	if err != nil {
		return nil, err
	}
	opts := inference.BundleOptions{AllowUnsigned: cfg.Model.AllowUnsigned, TrustedKeys: keys}
	b, err := inference.OpenBundle(cfg.Model.Path, opts)
	if err != nil {
		return nil, err
	}
	gate, gerr := NewPlausibilityGate(b, cfg.Model.Path)
	if gerr != nil && !errors.Is(gerr, ErrNoReference) {
		b.Close()
		return nil, gerr
	}
	keepFeatures := cfg.Drift.Enabled && cfg.Drift.Embedding
	// One session with model.threads intra-op threads: a second session
	// was ~10% faster per field here but cost ~20 MB of resident memory,
	// and the device budget is 200 MB. Crops are prepared on as many
	// workers as threads.
	focus := cfg.Drift.Enabled && cfg.Images.Kind == "crop"
	clf, err := inference.NewClassifier(b, inference.ClassifierOptions{
		Batch:   cfg.Model.Batch,
		Workers: cfg.Model.Threads,
		// Features only for the embedding drift detector and the
		// plausibility gate: a copy per cell.
		NoFeatures: !keepFeatures && !gate.NeedsFeatures(),
		// Focus only for the focus drift detector, which runs on crops.
		NoFocus: !focus,
		// No ORT arena: it would pin the peak of a field's batches for the
		// daemon's lifetime (measured: peak RSS 214 -> 205 MB, steady 178 ->
		// 169 MB on 20 fields, with the unit's malloc settings).
		Engine: inference.EngineOptions{IntraOpThreads: cfg.Model.Threads, Sessions: 1, ORTLib: cfg.Model.ORTLibrary, NoArena: true},
		Decode: inference.DecodeOptions{MaxPixels: cfg.Images.MaxPixels, MaxBytes: cfg.Images.MaxBytes},
	})
	if err != nil {
		b.Close()
		return nil, err
	}
	a := &modelAnalyzer{bundle: b, clf: clf, fieldMinSide: cfg.Images.FieldMinSide, manifestThr: clf.Threshold(), focus: focus,
		gate: gate, keepFeatures: keepFeatures}
	a.SetThreshold(cfg.Model.Threshold)
	a.fields = newFieldAnalyzer(clf)
	releaseStartPages(cfg, log, "model load")
	log.Info("model loaded", "version", clf.Version(), "path", cfg.Model.Path, "threshold", a.currentThreshold(),
		"signed_by", signerName(b), "fields", a.fields != nil)
	logGate(log, gate, gerr)
	return a, nil
}

func signerName(b *inference.Bundle) string {
	if b.Signer == nil {
		return "unsigned"
	}
	return inference.FormatPublicKey(b.Signer)
}

func (a *modelAnalyzer) ModelVersion() string { return a.clf.Version() }

// HasPlausibility reports whether the gate checks more than sizes.
func (a *modelAnalyzer) HasPlausibility() bool { return a.gate != nil && a.gate.HasReference() }

// Identity is the sha256 of the bundle's manifest, which covers every file.
func (a *modelAnalyzer) Identity() string { return a.bundle.ManifestSHA256 }

// BaselinePath is the bundle's baseline.json ("" when it ships none).
func (a *modelAnalyzer) BaselinePath() string { return a.bundle.BaselinePath }

// Threshold is the decision threshold in use.
func (a *modelAnalyzer) Threshold() float64 { return a.currentThreshold() }

func (a *modelAnalyzer) SetThreshold(t float64) { a.threshold.Store(math.Float64bits(t)) }

func (a *modelAnalyzer) currentThreshold() float64 {
	if t := math.Float64frombits(a.threshold.Load()); t > 0 {
		return t
	}
	return a.manifestThr
}

func (a *modelAnalyzer) Close() error {
	err := a.clf.Close()
	if e := a.bundle.Close(); err == nil {
		err = e
	}
	return err
}

// cell labels one cell at thr (read once per image, so that a reload
// cannot split an image's cells between two thresholds).
func cell(box image.Rectangle, p, thr float64) cellResult {
	pos := p >= thr
	label := "uninfected"
	if pos {
		label = "parasitized"
	}
	return cellResult{Box: box, P: p, Label: label, Parasitized: pos}
}

func (a *modelAnalyzer) Analyze(ctx context.Context, data []byte, kind string) (analysis, error) {
	_, w, h, err := a.clf.Decoder().Header(data)
	if err != nil {
		return analysis{}, asBadImage(err)
	}
	if kind == "auto" {
		kind = "crop"
		if w >= a.fieldMinSide && h >= a.fieldMinSide {
			kind = "field"
		}
	}
	an := analysis{Kind: kind, Width: w, Height: h}
	thr := a.currentThreshold()
	if kind == "field" {
		if a.fields == nil {
			return analysis{}, errors.New("field segmentation is not available in this build")
		}
		fw, fh, cells, err := a.fields.AnalyzeField(ctx, data)
		if err != nil {
			return analysis{}, asBadImage(err)
		}
		an.Width, an.Height = fw, fh
		var firstRefusal error
		for _, c := range cells {
			// A segmented cell that fails the gate gets no class and is
			// not counted: it is reported with the reason instead.
			if err := a.gate.CheckField(c.Appearance, c.Features, c.P); err != nil {
				an.Rejected = append(an.Rejected, rejectedCell{Box: c.Box, Check: refusalReason(err), Reason: err.Error()})
				if firstRefusal == nil {
					firstRefusal = err
				}
				continue
			}
			fc := cell(c.Box, c.P, thr)
			fc.Focus = c.Focus
			an.Cells = append(an.Cells, fc)
		}
		if len(an.Cells) == 0 && len(an.Rejected) > 0 {
			// Nothing in the field is a cell the model can judge: the field
			// gives no count at all rather than a count of zero.
			return an, &badImageError{Reason: "implausible",
				Err: fmt.Errorf("field: all %d segmented cells refused by the plausibility gate (first: %w)", len(an.Rejected), firstRefusal)}
		}
		return an, nil
	}
	if err := a.gate.CheckSize(w, h); err != nil {
		return an, &badImageError{Reason: "implausible", Check: refusalReason(err), Err: err}
	}
	res, err := a.clf.Classify(ctx, []inference.Input{{Data: data}})
	if err != nil {
		return analysis{}, err
	}
	if res[0].Err != nil {
		return analysis{}, asBadImage(res[0].Err)
	}
	if err := a.gate.Check(res[0].Appearance, res[0].Features, res[0].PParasitized); err != nil {
		return an, &badImageError{Reason: "implausible", Check: refusalReason(err), Err: err}
	}
	c := cell(image.Rect(0, 0, w, h), res[0].PParasitized, thr)
	c.Focus = res[0].Focus
	c.Appearance = res[0].Appearance.Values()
	if a.keepFeatures {
		c.Features = res[0].Features
	}
	an.Cells = []cellResult{c}
	return an, nil
}

// asBadImage marks the decoder's refusals as bad input (quarantine, 4xx),
// with a short reason for the metrics; other errors pass unchanged.
func asBadImage(err error) error {
	for _, r := range []struct {
		sentinel error
		reason   string
	}{
		{inference.ErrEmpty, "empty"},
		{inference.ErrNotImage, "not_image"},
		{inference.ErrTooLarge, "too_large"},
		{inference.ErrTruncated, "truncated"},
		{inference.ErrDecode, "corrupt"},
		{inference.ErrUnsupported, "unsupported"},
		{inference.ErrNotField, "not_field"},
		{inference.ErrImplausibleField, "implausible"},
	} {
		if errors.Is(err, r.sentinel) {
			return &badImageError{Reason: r.reason, Err: err}
		}
	}
	return err
}
