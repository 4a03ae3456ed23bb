package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/synth"
)

// goldenSet writes n nominal crops of unseen slides (generator seeds >=
// 100000 are never trained on).
func goldenSet(t *testing.T, n int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "golden")
	if _, err := synth.WriteCells(context.Background(), synth.CellsConfig{Dir: dir, N: n, Seed: 100900, CellsPerSlide: 25}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// withThreshold re-seals a copy of bundle dir with another threshold.
func withThreshold(t *testing.T, dir string, thr float64) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "thr")
	if err := copyBundle(dir, out); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(out, inference.ManifestFile))
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	m["threshold"] = thr
	raw, _ = json.Marshal(m)
	os.WriteFile(filepath.Join(out, inference.ManifestFile), raw, 0o644)
	if _, err := inference.SealBundle(out, testPriv); err != nil {
		t.Fatal(err)
	}
	return out
}

func classifier(t *testing.T, dir string) (*inference.Bundle, *inference.Classifier) {
	t.Helper()
	b, err := inference.OpenBundle(dir, inference.BundleOptions{TrustedKeys: trusted(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	c, err := inference.NewClassifier(b, inference.ClassifierOptions{NoFeatures: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return b, c
}

// TestGoldenCheck: the shipped model passes the default floors on unseen
// nominal slides, with figures that add up; a candidate that calls
// nearly every cell uninfected (its threshold moved to 0.99999) is
// refused for its sensitivity, and one unable to classify is refused for
// its accuracy.
func TestGoldenCheck(t *testing.T) {
	g := Golden{Dir: goldenSet(t, 200)}
	ctx := context.Background()
	b, c := classifier(t, defaultBundle())
	res, err := g.Check(ctx, b.Manifest.Version, c)
	if err != nil {
		t.Fatalf("the shipped model on its golden set: %+v %v", res, err)
	}
	if res.Images != 200 || res.Positives == 0 || res.Failed != 0 || !(res.Accuracy >= DefaultGoldenAccuracy) {
		t.Fatalf("result %+v", res)
	}

	bb, cb := classifier(t, withThreshold(t, defaultBundle(), 0.99999))
	res, err = g.Check(ctx, bb.Manifest.Version, cb)
	if !errors.Is(err, ErrGoldenFailed) || res.Sensitivity >= DefaultGoldenSensitivity {
		t.Fatalf("a blind candidate: %+v %v", res, err)
	}

	// Every image unreadable: counted wrong, not skipped.
	broken := t.TempDir()
	os.WriteFile(filepath.Join(broken, "labels.csv"), []byte("path,label\nx.png,parasitized\ny.png,uninfected\n"), 0o644)
	os.WriteFile(filepath.Join(broken, "x.png"), []byte("not a png"), 0o644)
	os.WriteFile(filepath.Join(broken, "y.png"), []byte("not a png"), 0o644)
	res, err = Golden{Dir: broken}.Check(ctx, b.Manifest.Version, c)
	if !errors.Is(err, ErrGoldenFailed) || res.Failed != 2 || res.Accuracy != 0 {
		t.Fatalf("unreadable golden images: %+v %v", res, err)
	}
}
