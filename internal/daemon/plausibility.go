package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strings"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/inference"
)

// PlausibilityGate decides whether a crop or a segmented cell looks enough
// like a red blood cell at the model's scale for its class to mean
// anything: size, colour and texture statistics within the reference's
// ranges, and backbone features near the nominal cells'. The daemon
// (serve) and the classify and fields commands use this one gate, so that
// an image refused by one is refused by all.
//
// Its reference comes from the bundle's baseline.json, or, for a bundle
// whose baseline has none (made before the gate, and not re-sealed), from
// a file beside the bundle, PlausibilitySidecar(modelPath), that names the
// bundle's manifest sha256. Without either the gate checks only the size,
// and says so.
type PlausibilityGate struct {
	crop, field stage // crops; segmented field cells
	// Source says where the reference came from ("" without one).
	Source string
}

// stage is one reference with its statistics' places in
// inference.AppearanceNames (ref nil: no check).
type stage struct {
	ref   *drift.Plausibility
	order []int
}

// MinCropSide is the smallest crop side the gate lets through. The shipped
// model's crops (synthetic and NIH-style) are 100-200 px; 32 px leaves
// room for smaller cameras without letting a thumbnail through.
const MinCropSide = 32

// ErrNoReference is returned by NewPlausibilityGate when no plausibility
// reference exists, with a gate that checks sizes only.
var ErrNoReference = errors.New("no plausibility reference")

// PlausibilitySidecar is where a plausibility reference kept apart from a
// bundle lives: beside it, as "<bundle>.plausibility.json".
func PlausibilitySidecar(modelPath string) string {
	return strings.TrimRight(modelPath, "/") + ".plausibility.json"
}

// NewPlausibilityGate builds the gate for an opened bundle found at
// modelPath. With no reference it returns a size-only gate and an error
// wrapping ErrNoReference (callers log it and carry on); any other error
// (an unreadable or mismatched reference) means the bundle must not serve.
func NewPlausibilityGate(b *inference.Bundle, modelPath string) (*PlausibilityGate, error) {
	g := &PlausibilityGate{}
	sidecar := PlausibilitySidecar(modelPath)
	if b.BaselinePath != "" {
		crop, field, err := drift.LoadBaselinePlausibility(b.BaselinePath)
		if err != nil {
			return nil, fmt.Errorf("plausibility reference: %w", err)
		}
		if crop != nil {
			return g, g.use(crop, field, "baseline "+b.BaselinePath)
		}
	}
	f, err := drift.LoadPlausibilityFile(sidecar)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return g, fmt.Errorf("%w: the bundle's baseline has none and %s does not exist; only crops under %d px are refused, and noise, solid colours or photographs can still get a class (make one with `scopewatch baseline --plausibility-out %s`)",
			ErrNoReference, sidecar, MinCropSide, sidecar)
	case err != nil:
		return nil, err
	case f.ModelIdentity != b.ManifestSHA256:
		return nil, fmt.Errorf("%s: made for the bundle whose manifest sha256 is %s, but %s has %s (model %s): make it again for this bundle with `scopewatch baseline --plausibility-out`",
			sidecar, f.ModelIdentity, modelPath, b.ManifestSHA256, b.Manifest.Version)
	}
	return g, g.use(f.Plausibility, f.Field, sidecar)
}

func (g *PlausibilityGate) use(crop, field *drift.Plausibility, source string) error {
	idx := map[string]int{}
	for i, n := range inference.AppearanceNames {
		idx[n] = i
	}
	for _, st := range []struct {
		s *stage
		p *drift.Plausibility
	}{{&g.crop, crop}, {&g.field, field}} {
		if st.p == nil {
			continue
		}
		for _, n := range st.p.StatNames() {
			i, ok := idx[n]
			if !ok {
				return fmt.Errorf("plausibility reference %s: statistic %q is not one this build measures (%s): the reference was made by another version", source, n, strings.Join(inference.AppearanceNames, ", "))
			}
			st.s.order = append(st.s.order, i)
		}
		st.s.ref = st.p
	}
	g.Source = source
	return nil
}

// HasReference reports whether the gate checks crops' colour, texture and
// features (false: sizes only).
func (g *PlausibilityGate) HasReference() bool { return g.crop.ref != nil }

// HasFieldReference reports whether the gate checks segmented field cells.
func (g *PlausibilityGate) HasFieldReference() bool { return g.field.ref != nil }

// NeedsFeatures reports whether Check or CheckField needs the backbone's
// features.
func (g *PlausibilityGate) NeedsFeatures() bool {
	return (g.crop.ref != nil && g.crop.ref.HasFeatures()) || (g.field.ref != nil && g.field.ref.HasFeatures())
}

// Reference is the gate's crop reference (nil for a size-only gate).
func (g *PlausibilityGate) Reference() *drift.Plausibility { return g.crop.ref }

// CheckSize refuses a crop too small to be a cell at the model's scale.
func (g *PlausibilityGate) CheckSize(w, h int) error {
	if w < MinCropSide || h < MinCropSide {
		// The model sees crops at 128 px; a thumbnail of a few pixels
		// scaled up is not a cell it can judge, and must not get a class.
		return fmt.Errorf("%w: crop %dx%d px: a red blood cell crop is at least %d px across; refused, not classified", drift.ErrImplausible, w, h, MinCropSide)
	}
	return nil
}

// Check judges one classified crop (inference.Result's Appearance,
// Features and PParasitized, which picks the reference's stratum): nil
// when plausible, else a *drift.Refusal.
func (g *PlausibilityGate) Check(a inference.Appearance, features []float32, p float64) error {
	return g.crop.check(a, features, p)
}

// CheckField judges one segmented field cell against the field reference
// (cells cut from fields look unlike crops: the crop reference refuses
// most of them). Without a field reference it passes every cell.
func (g *PlausibilityGate) CheckField(a inference.Appearance, features []float32, p float64) error {
	return g.field.check(a, features, p)
}

func (s stage) check(a inference.Appearance, features []float32, p float64) error {
	if s.ref == nil {
		return nil
	}
	all := a.Values()
	stats := make([]float64, len(s.order))
	for j, i := range s.order {
		stats[j] = all[i]
	}
	return s.ref.Check(stats, features, p)
}

// Judge applies the whole gate to one classifier result (size, then
// Check): what the classify command runs on each image.
func (g *PlausibilityGate) Judge(r inference.Result) error {
	if err := g.CheckSize(r.Width, r.Height); err != nil {
		return err
	}
	return g.Check(r.Appearance, r.Features, r.PParasitized)
}

// logGate says once which plausibility checks run.
func logGate(log *slog.Logger, g *PlausibilityGate, err error) {
	if err != nil {
		log.Warn("plausibility gate without reference: only the crop size is checked", "err", err)
		return
	}
	r := g.crop.ref
	log.Info("plausibility gate", "reference", g.Source, "statistics", len(r.StatNames()), "features", r.HasFeatures(),
		"target_false_rejection", r.FalseRejection, "calibration_rejected", r.CalibrationRejected(), "field_cells", g.HasFieldReference())
	if !g.HasFieldReference() {
		log.Warn("plausibility gate has no field-cell reference: segmented field cells are classified unchecked", "reference", g.Source)
	}
}

// refusalReason is the short metric label of a refusal: the check's name.
func refusalReason(err error) string {
	var r *drift.Refusal
	if errors.As(err, &r) {
		return r.Check
	}
	return "size"
}
