package drift

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// nominalCells draws n cells of nslides slides: two statistics (a slide
// effect plus cell noise) and dim correlated features. The process (how
// features mix) is the same for every seed; the seed draws the cells.
func nominalCells(seed uint64, n, nslides, dim int) (stats [][]float64, feats [][]float32, slides []string, scores []float64) {
	r := rand.New(rand.NewPCG(0, 1))
	mix := make([][]float64, dim)
	for j := range mix {
		mix[j] = make([]float64, 4)
		for k := range mix[j] {
			mix[j][k] = r.NormFloat64()
		}
	}
	r = rand.New(rand.NewPCG(seed, 1))
	effect := make([]float64, nslides)
	for s := range effect {
		effect[s] = r.NormFloat64() * 0.5
	}
	for i := range n {
		s := i % nslides
		stats = append(stats, []float64{10 + effect[s] + r.NormFloat64(), 0.3 + 0.02*r.NormFloat64()})
		var z [4]float64
		for k := range z {
			z[k] = r.NormFloat64()
		}
		f := make([]float32, dim)
		for j := range f {
			v := 0.1 * r.NormFloat64()
			for k := range z {
				v += mix[j][k] * z[k]
			}
			f[j] = float32(v)
		}
		feats = append(feats, f)
		slides = append(slides, "s"+strconv.Itoa(s))
		// Half the cells on each side of a 0.5 threshold: both strata.
		scores = append(scores, 0.1+0.8*float64(i%2))
	}
	return stats, feats, slides, scores
}

var testStatNames = []string{"level", "share"}

func TestPlausibilityCalibratedOnNewSlides(t *testing.T) {
	stats, feats, slides, scores := nominalCells(1, 8000, 800, 12)
	p, err := BuildPlausibility(testStatNames, stats, feats, slides, scores, 0.5, PlausibilityConfig{FalseRejection: 0.01, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []*Stratum{p.Uninfected, p.Parasitized} {
		if st.CalibrationRejected > 0.01 || st.Cells != 4000 {
			t.Fatalf("stratum of %d cells: calibration part refused %.4f, above the 0.01 target", st.Cells, st.CalibrationRejected)
		}
	}
	// Fresh slides of the same process: the refusal rate is near the target,
	// neither far above (a gate that refuses good cells) nor zero (ranges so
	// wide they could not be calibrated).
	hs, hf, _, hp := nominalCells(2, 8000, 800, 12)
	var refused int
	for i := range hs {
		if err := p.Check(hs[i], hf[i], hp[i]); err != nil {
			if !errors.Is(err, ErrImplausible) {
				t.Fatalf("cell %d: %v is not a refusal", i, err)
			}
			refused++
		}
	}
	if rate := float64(refused) / float64(len(hs)); rate > 0.02 || rate == 0 {
		t.Fatalf("fresh slides refused at %.4f, want about the 0.01 target", rate)
	}
}

func TestPlausibilityRefusesWithTheReason(t *testing.T) {
	stats, feats, slides, scores := nominalCells(1, 4000, 400, 12)
	p, err := BuildPlausibility(testStatNames, stats, feats, slides, scores, 0.5, PlausibilityConfig{Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	good := feats[0]
	far := make([]float32, len(good))
	for j := range far {
		far[j] = good[j] + 30
	}
	for _, tc := range []struct {
		name  string
		stats []float64
		feats []float32
		check string // "" = accepted
	}{
		{"nominal", []float64{10, 0.3}, good, ""},
		{"level far below", []float64{-5, 0.3}, good, "level"},
		{"share far above", []float64{10, 0.9}, good, "share"},
		{"unmeasurable", []float64{math.NaN(), 0.3}, good, "level"},
		{"features far away", []float64{10, 0.3}, far, FeatureDistance},
		{"features not finite", []float64{10, 0.3}, append([]float32{float32(math.Inf(1))}, good[1:]...), FeatureDistance},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := p.Check(tc.stats, tc.feats, 0.1)
			if tc.check == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var r *Refusal
			if !errors.As(err, &r) || r.Check != tc.check || !errors.Is(err, ErrImplausible) {
				t.Fatalf("got %v, want a refusal by %s", err, tc.check)
			}
			if !strings.HasPrefix(err.Error(), "rejected: "+tc.check) {
				t.Fatalf("message %q does not start with the check", err)
			}
		})
	}
	// Wrong shapes are a caller's bug, reported as such and never accepted.
	if err := p.Check([]float64{10}, good, 0.9); err == nil || errors.Is(err, ErrImplausible) {
		t.Fatalf("one statistic for two: %v", err)
	}
	if err := p.Check([]float64{10, 0.3}, good[:3], 0.9); err == nil || errors.Is(err, ErrImplausible) {
		t.Fatalf("3 features for 12: %v", err)
	}
}

func TestBuildPlausibilityRefusesTooLittleData(t *testing.T) {
	stats, feats, slides, scores := nominalCells(1, 4000, 400, 4)
	one := make([]string, len(slides))
	for i := range one {
		one[i] = "only"
	}
	for _, tc := range []struct {
		name   string
		stats  [][]float64
		slides []string
	}{
		{"one slide", stats, one},
		{"few cells", stats[:600], slides[:600]},
		{"slides do not match", stats, slides[:10]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := len(tc.stats)
			if _, err := BuildPlausibility(testStatNames, tc.stats, feats[:n], tc.slides, scores[:n], 0.5, PlausibilityConfig{}); !errors.Is(err, ErrInvalidBaseline) {
				t.Fatalf("got %v, want ErrInvalidBaseline", err)
			}
		})
	}
}

// A baseline keeps its plausibility references through Save and Load, and
// the reloaded gate judges exactly as the built one; a baseline made
// without them still loads, with none.
func TestBaselinePlausibilityRoundTrip(t *testing.T) {
	scores, labels, feats := synthCells(3000, 0.4, 0, 1)
	stats, _, slides, _ := nominalCells(5, len(scores), 300, 1)
	cfg := BaselineConfig{Seed: 1, Slides: slides, Appearance: stats, AppearanceNames: testStatNames, Detector: CalibrationConfig{Sims: 100}}
	b, err := BuildBaseline(context.Background(), scores, labels, feats, 0.5, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if b.Plausibility == nil || !b.Plausibility.HasFeatures() {
		t.Fatal("no plausibility reference with features in the built baseline")
	}
	b.FieldPlausibility = b.Plausibility
	path := filepath.Join(t.TempDir(), "baseline.json")
	if err := b.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadBaseline(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Plausibility == nil || got.FieldPlausibility == nil {
		t.Fatal("plausibility references lost in the round trip")
	}
	// What the gate reads at a model load: only the references.
	crop, field, err := LoadBaselinePlausibility(path)
	if err != nil || crop == nil || field == nil {
		t.Fatalf("LoadBaselinePlausibility: %v, %v, %v", crop, field, err)
	}
	probe := [][]float64{{10, 0.3}, {-50, 0.3}, {10, 5}}
	for i, f := range feats {
		s := probe[i%len(probe)]
		want, have := b.Plausibility.Check(s, f, scores[i]), got.Plausibility.Check(s, f, scores[i])
		if light := crop.Check(s, f, scores[i]); (light == nil) != (want == nil) {
			t.Fatalf("row %d: built gate says %v, references alone %v", i, want, light)
		}
		if (want == nil) != (have == nil) || (want != nil && want.Error() != have.Error()) {
			t.Fatalf("row %d: built gate says %v, reloaded %v", i, want, have)
		}
	}

	cfg.Appearance, cfg.AppearanceNames = nil, nil
	old, err := BuildBaseline(context.Background(), scores, labels, feats, 0.5, cfg)
	if err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(old)
	if bytes.Contains(j, []byte("plausibility")) {
		t.Fatal("a baseline without a reference writes a plausibility key: older readers would refuse it")
	}
	re, err := DecodeBaselineBytes(j)
	if err != nil || re.Plausibility != nil {
		t.Fatalf("baseline without plausibility: %v, reference %v", err, re.Plausibility)
	}
	if err := old.Save(path); err != nil {
		t.Fatal(err)
	}
	if crop, field, err := LoadBaselinePlausibility(path); err != nil || crop != nil || field != nil {
		t.Fatalf("LoadBaselinePlausibility without references: %v, %v, %v", crop, field, err)
	}
}

func TestPlausibilityFileValidation(t *testing.T) {
	stats, feats, slides, scores := nominalCells(1, 2000, 200, 3)
	p, err := BuildPlausibility(testStatNames, stats, feats, slides, scores, 0.5, PlausibilityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	good := PlausibilityFile{Schema: PlausibilitySchema, ModelVersion: "v1", ModelIdentity: strings.Repeat("ab", 32), Plausibility: p}
	path := filepath.Join(t.TempDir(), "m.plausibility.json")
	if err := good.Save(path); err != nil {
		t.Fatal(err)
	}
	if f, err := LoadPlausibilityFile(path); err != nil || f.Plausibility.Check([]float64{10, 0.3}, feats[0], scores[0]) != nil {
		t.Fatalf("saved file: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(m map[string]any)
	}{
		{"schema", func(m map[string]any) { m["schema"] = "scopewatch.baseline/v1" }},
		{"identity", func(m map[string]any) { m["model_identity"] = "not-a-hash" }},
		{"no reference", func(m map[string]any) { delete(m, "plausibility") }},
		{"unknown key", func(m map[string]any) { m["extra"] = 1 }},
		{"inverted range", func(m map[string]any) { stat(m, 0)["lo"] = 1e9 }},
		{"duplicate statistic", func(m map[string]any) { stat(m, 1)["name"] = stat(m, 0)["name"] }},
		{"zero diagonal", func(m map[string]any) { feat(m)["chol"].([]any)[0] = 0.0 }},
		{"short factor", func(m map[string]any) { feat(m)["chol"] = []any{1.0} }},
		{"negative threshold", func(m map[string]any) { feat(m)["threshold"] = -1.0 }},
		{"target rate", func(m map[string]any) { m["plausibility"].(map[string]any)["false_rejection"] = 0.9 }},
		{"stratum missing", func(m map[string]any) { delete(m["plausibility"].(map[string]any), "parasitized") }},
		{"threshold", func(m map[string]any) { m["plausibility"].(map[string]any)["threshold"] = 1.0 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m map[string]any
			j, _ := json.Marshal(good)
			json.Unmarshal(j, &m)
			tc.edit(m)
			j, _ = json.Marshal(m)
			if _, err := DecodePlausibilityFile(bytes.NewReader(j)); !errors.Is(err, ErrInvalidBaseline) {
				t.Fatalf("got %v, want ErrInvalidBaseline", err)
			}
		})
	}
}

func stat(m map[string]any, i int) map[string]any {
	return m["plausibility"].(map[string]any)["parasitized"].(map[string]any)["stats"].([]any)[i].(map[string]any)
}

func feat(m map[string]any) map[string]any {
	return m["plausibility"].(map[string]any)["uninfected"].(map[string]any)["features"].(map[string]any)
}

// The plausibility file comes from disk beside a bundle, outside its
// signature: whatever it holds, decoding fails cleanly or gives a gate
// that judges without panicking.
func FuzzDecodePlausibilityFile(f *testing.F) {
	stats, feats, slides, scores := nominalCells(1, 2000, 200, 2)
	p, err := BuildPlausibility(testStatNames, stats, feats, slides, scores, 0.5, PlausibilityConfig{})
	if err != nil {
		f.Fatal(err)
	}
	j, _ := json.Marshal(PlausibilityFile{Schema: PlausibilitySchema, ModelIdentity: strings.Repeat("0", 64), Plausibility: p})
	f.Add(j)
	stratum := `{"false_rejection":0.1,"cells":1,"slides":1,"calibration_rejected":0,"stats":[{"name":"a","lo":0,"hi":1}],"features":{"dim":1,"mean":[0],"chol":[1],"shrinkage":0.5,"threshold":2}}`
	f.Add([]byte(`{"schema":"scopewatch.plausibility/v1","model_identity":"` + strings.Repeat("1", 64) + `","plausibility":{"false_rejection":0.1,"threshold":0.5,"uninfected":` + stratum + `,"parasitized":` + stratum + `}}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		pf, err := DecodePlausibilityFile(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrInvalidBaseline) {
				t.Fatalf("error %v does not wrap ErrInvalidBaseline", err)
			}
			return
		}
		for _, pp := range []float64{0, 1} {
			g := pf.Plausibility.Stratum(pp)
			s := make([]float64, len(g.Stats))
			var fe []float32
			if g.Features != nil {
				fe = make([]float32, g.Features.Dim)
			}
			_ = pf.Plausibility.Check(s, fe, pp)
			if d := g.Distance(fe); g.Features != nil && !(d >= 0) {
				t.Fatalf("distance %v of a valid reference", d)
			}
		}
	})
}
