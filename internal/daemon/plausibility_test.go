package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/config"
	"github.com/scopewatch/scopewatch/internal/synth"
)

// The generator seeds here are used nowhere else: not in the model's
// training, validation or test data, nor in the plausibility reference's
// calibration (models/recipe/README.md lists those).
const (
	plausNominalSeed = 424301
	plausJunkSeed    = 424303
	plausFieldSeed   = 424305
)

func gatedAnalyzer(t *testing.T) *modelAnalyzer {
	t.Helper()
	cfg := config.Default()
	cfg.Model.Path = requireDefaultModel(t)
	cfg.Model.Keys = filepath.Join(repoRoot(t), "models", "keys")
	a, err := openAnalyzer(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ma := a.(*modelAnalyzer)
	if !ma.gate.HasReference() || !ma.gate.HasFieldReference() {
		t.Fatalf("the shipped model runs without a plausibility reference (source %q): its baseline.json lacks one", ma.gate.Source)
	}
	return ma
}

func encodePNGImage(t *testing.T, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Every kind of junk is refused with the check that failed and never given
// a class, by the shipped model and its reference through real ONNX
// Runtime; nominal crops of slides the reference never saw are classified.
func TestPlausibilityGateRefusesJunk(t *testing.T) {
	a := gatedAnalyzer(t)
	ctx := context.Background()
	for _, kind := range synth.JunkKinds {
		t.Run(kind, func(t *testing.T) {
			for i := range 10 {
				var nom image.Image
				if synth.JunkNeedsNominal(kind) {
					nom = synth.CellAt(plausJunkSeed, synth.Knobs{}, 0, i).Image
				}
				img, err := synth.Junk(kind, i, plausJunkSeed, nom)
				if err != nil {
					t.Fatal(err)
				}
				an, err := a.Analyze(ctx, encodePNGImage(t, img), "crop")
				var bad *badImageError
				if !errors.As(err, &bad) || bad.Reason != "implausible" || bad.Check == "" || len(an.Cells) != 0 {
					t.Fatalf("%s %d: %v, %d cells: want refused as implausible with no class", kind, i, err, len(an.Cells))
				}
				if !strings.HasPrefix(err.Error(), "rejected: ") || !errors.Is(err, drift.ErrImplausible) {
					t.Fatalf("%s %d: reason %q does not say what was rejected", kind, i, err)
				}
			}
		})
	}
	t.Run("nominal", func(t *testing.T) {
		const n = 200
		var refused []string
		for i := range n {
			s := synth.CellAt(plausNominalSeed, synth.Knobs{}, 3, i)
			var buf bytes.Buffer
			if err := synth.Encode(&buf, s.Image, synth.Knobs{}); err != nil {
				t.Fatal(err)
			}
			an, err := a.Analyze(ctx, buf.Bytes(), "crop")
			switch {
			case err == nil && len(an.Cells) == 1:
			case errors.Is(err, drift.ErrImplausible):
				refused = append(refused, err.Error())
			default:
				t.Fatalf("crop %d: %v", i, err)
			}
		}
		// The reference is calibrated to refuse 0.25% of nominal cells; 2
		// of 200 is well above that, and would show a reference that does
		// not describe these slides.
		if len(refused) > 2 {
			t.Fatalf("%d of %d nominal crops refused: %q", len(refused), n, refused)
		}
	})
}

// Segmented cells of a nominal field are counted; a field of noise or a
// blank slide gives no count at all.
func TestPlausibilityGateOnFields(t *testing.T) {
	a := gatedAnalyzer(t)
	ctx := context.Background()
	img, _, _ := synth.FieldAt(plausFieldSeed, synth.Knobs{}, 1, 0)
	an, err := a.Analyze(ctx, encodePNGImage(t, img), "field")
	if err != nil {
		t.Fatal(err)
	}
	if len(an.Cells) < 100 || len(an.Rejected)*100 > len(an.Cells)+len(an.Rejected) {
		t.Fatalf("nominal field: %d cells counted, %d refused: want at least 100 and at most 1%% refused", len(an.Cells), len(an.Rejected))
	}
	noise, err := synth.Junk("noise", 0, plausJunkSeed, nil)
	if err != nil {
		t.Fatal(err)
	}
	blankTile, err := synth.Junk("blank", 0, plausJunkSeed, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, tile := range map[string]image.Image{"noise": noise, "blank": blankTile} {
		field := image.NewRGBA(image.Rect(0, 0, 1024, 768))
		for y := 0; y < 768; y += 128 {
			for x := 0; x < 1024; x += 128 {
				for ty := range 128 {
					for tx := range 128 {
						field.Set(x+tx, y+ty, tile.At(tx, ty))
					}
				}
			}
		}
		// Refused, or (when segmentation finds nothing to cut) no cell:
		// either way nothing is counted.
		an, err := a.Analyze(ctx, encodePNGImage(t, field), "field")
		var bad *badImageError
		if (err != nil && !errors.As(err, &bad)) || (err == nil && len(an.Cells) != 0) {
			t.Fatalf("%s field: %v with %d cells counted: want no count", name, err, len(an.Cells))
		}
		t.Logf("%s field: %v (%d cells refused)", name, err, len(an.Rejected))
	}
}

// A junk upload is answered with the refusal and its reason, gets no class,
// is counted by the check that failed, and adds nothing to the slide.
func TestJunkUploadIsRefused(t *testing.T) {
	mutate := func(c *config.Config) {
		realModelConfig(t, c)
		c.Model.Keys = filepath.Join(repoRoot(t), "models", "keys")
		c.Images.Kind = "crop"
	}
	cfg := config.Default()
	mutate(&cfg)
	model, err := openAnalyzer(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	td := startTestDaemonWith(t, t.TempDir(), model, mutate)
	white, _ := synth.Junk("white", 0, plausJunkSeed, nil)
	resp := upload(t, td.url+"/v1/images?slide=junk1&name=white.png", "image/png", encodePNGImage(t, white))
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ae apiError
	if err := json.Unmarshal(body, &ae); err != nil || resp.StatusCode != http.StatusUnprocessableEntity || ae.Reason != "implausible" || !strings.Contains(ae.Error, "rejected: ") {
		t.Fatalf("white crop: %d %s: want 422 implausible with the reason", resp.StatusCode, body)
	}
	if strings.Contains(string(body), "parasitized") || strings.Contains(string(body), "uninfected") {
		t.Fatalf("a refused crop's answer carries a class: %s", body)
	}
	var cells int
	td.d.db.db.QueryRow(`SELECT COUNT(*) FROM images WHERE name = 'white.png'`).Scan(&cells)
	if cells != 0 {
		t.Fatal("the refused crop was stored as an image of the slide")
	}
	m, _ := http.Get(td.url + "/metrics")
	metrics, _ := io.ReadAll(m.Body)
	m.Body.Close()
	var check string
	if i := strings.Index(ae.Error, "rejected: "); i >= 0 {
		check = strings.Fields(ae.Error[i+len("rejected: "):])[0]
	}
	want := fmt.Sprintf(`scopewatch_implausible_total{check=%q,kind="crop"} 1`, check)
	if !strings.Contains(string(metrics), want) {
		t.Fatalf("metrics lack %s:\n%s", want, grepLines(string(metrics), "implausible"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A bundle whose baseline has no plausibility reference and no file beside
// it still serves, with a size-only gate, and says so; a reference made for
// another bundle is refused rather than applied.
func TestPlausibilityGateWithoutOrForeignReference(t *testing.T) {
	root := requireDefaultModel(t)
	dir := filepath.Join(t.TempDir(), "default")
	if err := os.CopyFS(dir, os.DirFS(root)); err != nil {
		t.Fatal(err)
	}
	// The shipped baseline without its references, re-sealed by a key the
	// test trusts.
	var base map[string]any
	raw, _ := os.ReadFile(filepath.Join(dir, "baseline.json"))
	if err := json.Unmarshal(raw, &base); err != nil || base["plausibility"] == nil {
		t.Fatalf("the shipped baseline: %v, plausibility present %v", err, base["plausibility"] != nil)
	}
	delete(base, "plausibility")
	delete(base, "field_plausibility")
	raw, _ = json.Marshal(base)
	os.WriteFile(filepath.Join(dir, "baseline.json"), raw, 0o644)
	fl := newFleet(t)
	if _, err := inference.SealBundle(dir, fl.priv); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Model.Path = dir
	cfg.Model.Keys = fl.keys
	var logs bytes.Buffer
	a, err := openAnalyzer(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ma := a.(*modelAnalyzer)
	if ma.gate.HasReference() || !strings.Contains(logs.String(), "only the crop size is checked") {
		a.Close()
		t.Fatalf("no reference: gate %+v, log %s", ma.gate, logs.String())
	}
	a.Close()

	crop, field, err := drift.LoadBaselinePlausibility(filepath.Join(root, "baseline.json"))
	if err != nil {
		t.Fatal(err)
	}
	ref := &drift.PlausibilityFile{Schema: drift.PlausibilitySchema, ModelVersion: "2026.11.28-2", ModelIdentity: strings.Repeat("0", 64), Plausibility: crop, Field: field}
	if err := ref.Save(PlausibilitySidecar(dir)); err != nil {
		t.Fatal(err)
	}
	if a, err := openAnalyzer(cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "made for the bundle") {
		if a != nil {
			a.Close()
		}
		t.Fatalf("a reference for another bundle: %v, want refused", err)
	}
}
