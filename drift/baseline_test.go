package drift

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var (
	testBaselineOnce sync.Once
	testBaseline     *Baseline
)

// sharedBaseline is a small baseline with features, built once per test binary.
func sharedBaseline(t testing.TB) *Baseline {
	testBaselineOnce.Do(func() { testBaseline = smallBaseline(t, 300, 60, []int{20, 60}, 300, true) })
	return testBaseline
}

func TestBuildBaselineContents(t *testing.T) {
	b := sharedBaseline(t)
	if b.Schema != BaselineSchema || b.TestSize != 1500 || len(b.Scores) != 1000 || len(b.Labels) != 1000 || len(b.Projected) != 1000 {
		t.Fatalf("schema %q test size %d, %d scores, %d labels, %d projected", b.Schema, b.TestSize, len(b.Scores), len(b.Labels), len(b.Projected))
	}
	m := b.Metrics
	for name, iv := range map[string]Interval{"accuracy": m.Accuracy, "sensitivity": m.Sensitivity, "specificity": m.Specificity, "auc": m.AUC} {
		if !(iv.Lo < iv.Value && iv.Value < iv.Hi) || iv.Hi-iv.Lo > 0.2 {
			t.Errorf("%s interval %+v: want lo < value < hi, narrower than 0.2 on 1500 cases", name, iv)
		}
	}
	if len(b.Quantiles) != 101 || b.Quantiles[0].V > b.Quantiles[50].V || b.Quantiles[100].V > 1 {
		t.Errorf("quantiles %v", b.Quantiles[:3])
	}
	if b.ECE.Kept != (b.Calibration != nil) || b.ECE.Kept != (b.ECE.Isotonic < b.ECE.Raw) {
		t.Errorf("ECE %+v but calibration map present = %v", b.ECE, b.Calibration != nil)
	}
	if len(b.Detector.Tests) != 6 || len(b.Descriptive) != 2 {
		t.Errorf("%d tests, %d descriptive thresholds: want 6 and 2", len(b.Detector.Tests), len(b.Descriptive))
	}
}

func TestMetricsAgainstDirectComputation(t *testing.T) {
	s, l, _ := synthCells(400, 0.3, 0, 9)
	m := computeMetrics(s, l, 0.5, 50, 1)
	var tp, tn, p, n, pairs, wins float64
	for i := range s {
		if l[i] == 1 {
			p++
			if s[i] >= 0.5 {
				tp++
			}
			for j := range s {
				if l[j] == 0 {
					pairs++
					switch {
					case s[i] > s[j]:
						wins++
					case s[i] == s[j]:
						wins += 0.5
					}
				}
			}
		} else {
			n++
			if s[i] < 0.5 {
				tn++
			}
		}
	}
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"accuracy", m.Accuracy.Value, (tp + tn) / (p + n)}, {"sensitivity", m.Sensitivity.Value, tp / p}, {"specificity", m.Specificity.Value, tn / n}, {"auc", m.AUC.Value, wins / pairs}} {
		if math.Abs(c.got-c.want) > 1e-12 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestIsotonicKeptOnlyWhenItHelps(t *testing.T) {
	// Miscalibrated: true probability is the score squared.
	r := newRand(5, 5)
	var s []float64
	var l []int
	for range 3000 {
		x := r.Float64()
		s = append(s, x)
		y := 0
		if r.Float64() < x*x {
			y = 1
		}
		l = append(l, y)
	}
	raw, iso := crossValidatedECE(s, l, 5, 1)
	if !(iso < raw) {
		t.Fatalf("miscalibrated scores: cv ECE raw %.4f, isotonic %.4f; isotonic should win", raw, iso)
	}
	m := fitIsotonic(s, l)
	if got := m.Apply(0.5); math.Abs(got-0.25) > 0.08 {
		t.Errorf("isotonic(0.5) = %.3f, want about 0.25", got)
	}
}

func TestBaselineRoundTrip(t *testing.T) {
	b := sharedBaseline(t)
	p := filepath.Join(t.TempDir(), "baseline.json")
	if err := b.Save(p); err != nil {
		t.Fatal(err)
	}
	c, err := LoadBaseline(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Fingerprint() != b.Fingerprint() {
		t.Fatal("fingerprint changed through save/load")
	}
	// The reloaded baseline drives identical detections.
	s, _, f := synthCells(400, 0.2, 1.5, 4)
	m1, _ := NewMonitor(b)
	m2, _ := NewMonitor(c)
	for i := range s {
		e1, err1 := m1.Observe(Observation{Score: s[i], Features: f[i]})
		e2, err2 := m2.Observe(Observation{Score: s[i], Features: f[i]})
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		j1, _ := json.Marshal(e1)
		j2, _ := json.Marshal(e2)
		if !bytes.Equal(j1, j2) {
			t.Fatalf("step %d: events differ: %s vs %s", i, j1, j2)
		}
	}
}

func TestLoadBaselineRejects(t *testing.T) {
	b := sharedBaseline(t)
	good, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		j, _ := json.Marshal(m)
		return j
	}
	cases := map[string][]byte{
		"unknown key":   edit(func(m map[string]any) { m["extra"] = 1 }),
		"schema":        edit(func(m map[string]any) { m["schema"] = "scopewatch.baseline/v0" }),
		"threshold":     edit(func(m map[string]any) { m["threshold"] = 1.5 }),
		"score range":   edit(func(m map[string]any) { m["scores"].([]any)[3] = 2.0 }),
		"labels length": edit(func(m map[string]any) { m["labels"] = m["labels"].([]any)[:10] }),
		"no detector":   edit(func(m map[string]any) { delete(m, "detector") }),
		"ci order":      edit(func(m map[string]any) { m["metrics"].(map[string]any)["auc"].(map[string]any)["lo"] = 0.9999 }),
		"thresholds":    edit(func(m map[string]any) { m["detector"].(map[string]any)["alarm"] = []any{} }),
		"unknown signal": edit(func(m map[string]any) {
			m["detector"].(map[string]any)["tests"].([]any)[0].(map[string]any)["signal"] = "psi"
		}),
		"projected width": edit(func(m map[string]any) { m["projected"].([]any)[0] = []any{1.0} }),
		"trailing data":   append(append([]byte{}, good...), []byte(" {}")...),
		"not json":        []byte("baseline"),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeBaselineBytes(in); !errors.Is(err, ErrInvalidBaseline) {
				t.Fatalf("err = %v, want ErrInvalidBaseline", err)
			}
		})
	}
	if _, err := DecodeBaselineBytes(good); err != nil {
		t.Fatalf("unedited baseline rejected: %v", err)
	}
}

func FuzzDecodeBaseline(f *testing.F) {
	b := tinyBaseline(f)
	good, err := json.Marshal(b)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"schema":"scopewatch.baseline/v1"}`))
	f.Add([]byte(strings.Replace(string(good), `"window":5`, `"window":-1`, 1)))
	f.Fuzz(func(t *testing.T, in []byte) {
		b, err := DecodeBaselineBytes(in)
		if err != nil {
			if !errors.Is(err, ErrInvalidBaseline) {
				t.Fatalf("error not wrapping ErrInvalidBaseline: %v", err)
			}
			return
		}
		// Anything accepted must be usable without panicking.
		m, err := NewMonitor(b)
		if err != nil {
			t.Fatal(err)
		}
		var f []float32
		if m.UsesFeatures() {
			f = make([]float32, b.Embedding.InputDim)
		}
		for i := range 50 {
			if _, err := m.Observe(Observation{Score: float64(i%3) / 2, Features: f}); err != nil {
				t.Fatal(err)
			}
		}
		_ = m.Performance()
	})
}

func TestBuildBaselineRejectsBadInput(t *testing.T) {
	s, l, f := synthCells(100, 0.3, 0, 1)
	ctx := context.Background()
	cfg := BaselineConfig{Detector: CalibrationConfig{ERT: 100, Windows: []int{10}, Sims: 100}, BootstrapReps: 10, DescriptiveSims: 10}
	bad := map[string]func() error{
		"nan score": func() error {
			s2 := append([]float64{}, s...)
			s2[0] = math.NaN()
			_, err := BuildBaseline(ctx, s2, l, nil, 0.5, cfg)
			return err
		},
		"one class": func() error { _, err := BuildBaseline(ctx, s, make([]int, len(s)), nil, 0.5, cfg); return err },
		"labels":    func() error { _, err := BuildBaseline(ctx, s, l[:10], nil, 0.5, cfg); return err },
		"threshold": func() error { _, err := BuildBaseline(ctx, s, l, nil, 1, cfg); return err },
		"features":  func() error { _, err := BuildBaseline(ctx, s, l, f[:5], 0.5, cfg); return err },
		"ragged feat": func() error {
			f2 := append([][]float32{}, f...)
			f2[1] = f2[1][:3]
			_, err := BuildBaseline(ctx, s, l, f2, 0.5, cfg)
			return err
		},
		"mmd without features": func() error {
			c := cfg
			c.Detector.Signals = map[string]float64{SignalEmbedding: 1}
			_, err := BuildBaseline(ctx, s, l, nil, 0.5, c)
			return err
		},
	}
	for name, f := range bad {
		if err := f(); !errors.Is(err, ErrInvalidBaseline) {
			t.Errorf("%s: err = %v, want ErrInvalidBaseline", name, err)
		}
	}
}

func TestPlotHistogram(t *testing.T) {
	b := sharedBaseline(t)
	s, _, _ := synthCells(300, 0.5, 0, 8)
	for _, format := range []string{"png", "svg"} {
		var buf bytes.Buffer
		if err := PlotHistogram(&buf, format, b, s, "test"); err != nil {
			t.Fatal(err)
		}
		magic := map[string]string{"png": "\x89PNG", "svg": "<?xml"}[format]
		if !bytes.HasPrefix(buf.Bytes(), []byte(magic)) {
			t.Fatalf("%s output starts %q", format, buf.Bytes()[:8])
		}
		if os.Getenv("DRIFT_KEEP_PLOT") != "" {
			_ = os.WriteFile(filepath.Join(os.TempDir(), "drift-hist."+format), buf.Bytes(), 0o644)
		}
	}
	if err := PlotHistogram(&bytes.Buffer{}, "gif", b, s, ""); err == nil {
		t.Fatal("gif accepted")
	}
}

func TestReferencePrevalence(t *testing.T) {
	s, l, _ := synthCells(2000, 0.5, 0, 12)
	b, err := BuildBaseline(context.Background(), s, l, nil, 0.5, BaselineConfig{
		Seed: 1, BootstrapReps: 20, DescriptiveSims: 10, ReferencePrevalence: 0.05,
		Detector: CalibrationConfig{ERT: 100, Windows: []int{10, 30}, Sims: 100},
	})
	if err != nil {
		t.Fatal(err)
	}
	var pos int
	for _, y := range b.Labels {
		pos += y
	}
	frac := float64(pos) / float64(len(b.Labels))
	if math.Abs(frac-0.05) > 0.002 || len(b.Labels) < 900 {
		t.Fatalf("reference: %d rows, %.4f parasitized; want about 1000 rows at 0.05", len(b.Labels), frac)
	}
	if b.Metrics.N != 2000 {
		t.Fatalf("metrics on %d cells, want the whole test set", b.Metrics.N)
	}
}
