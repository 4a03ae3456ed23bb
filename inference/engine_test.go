package inference

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// tinyModel is testdata/tiny.onnx (testdata/gen_tiny.py): the default
// bundle's interface, input "image" [N,3,128,128], with 16 features.
const tinyModel = "testdata/tiny.onnx"

var tinyInput = InputSpec{Name: "image", Width: 128, Height: 128, Layout: "NCHW", Color: "RGB",
	Scale: 1.0 / 255, Mean: [3]float64{0.485, 0.456, 0.406}, Std: [3]float64{0.229, 0.224, 0.225}}
var tinyOutputs = OutputSpec{Features: "features", FeaturesDim: 16}

// tinyReference is torch's output of the tiny model on linspace(-1, 1) over
// the whole [1,3,128,128] input (printed by gen_tiny.py).
var tinyReference = []float32{-0.1731398105621338, -0.434049129486084, 0.23794671893119812, 0.04087860882282257, -0.24052569270133972, -0.1218125969171524, 0.2229977697134018, 0.1954353153705597, -0.057295627892017365, -0.3337450921535492, -0.03041795641183853, 0.2382381409406662, 0.23944348096847534, -0.06189154088497162, -0.03616723418235779, -0.28473740816116333}

func newTinyEngine(t testing.TB, opts EngineOptions) *Engine {
	t.Helper()
	e, err := NewEngine(tinyModel, tinyInput, tinyOutputs, 2, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func fillLinspace(x []float32) {
	n := len(x)
	for i := range x {
		x[i] = float32(-1 + 2*float64(i)/float64(n-1))
	}
}

func TestEngineMatchesTorch(t *testing.T) {
	e := newTinyEngine(t, EngineOptions{})
	b, err := e.NewBatch(3)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	// The reference image in slot 1 of a batch of 3 and alone: batching
	// must not change an image's features.
	for _, run := range []struct{ n, slot int }{{3, 1}, {1, 0}} {
		for s := range run.n {
			in := b.Input(s)
			for i := range in {
				in[i] = 0.5
			}
		}
		fillLinspace(b.Input(run.slot))
		if err := e.Run(b, run.n); err != nil {
			t.Fatal(err)
		}
		got := b.Features(run.slot)
		for i, want := range tinyReference {
			if math.Abs(float64(got[i]-want)) > 1e-5 {
				t.Fatalf("batch %d: feature %d = %v, torch gives %v", run.n, i, got[i], want)
			}
		}
	}
}

func TestEngineRejectsMismatch(t *testing.T) {
	probs := "probabilities"
	cases := []struct {
		name  string
		in    InputSpec
		out   OutputSpec
		field string
	}{
		{"input name", func() InputSpec { s := tinyInput; s.Name = "input"; return s }(), tinyOutputs, "input.name"},
		{"input size", func() InputSpec { s := tinyInput; s.Width = 96; return s }(), tinyOutputs, "input.name"},
		{"layout", func() InputSpec { s := tinyInput; s.Layout = "NHWC"; return s }(), tinyOutputs, "input.name"},
		{"features name", tinyInput, OutputSpec{Features: "feats", FeaturesDim: 16}, "outputs.features"},
		{"features dim", tinyInput, OutputSpec{Features: "features", FeaturesDim: 576}, "outputs.features"},
		{"probabilities", tinyInput, OutputSpec{Features: "features", FeaturesDim: 16, Probabilities: &probs}, "outputs.probabilities"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e, err := NewEngine(tinyModel, c.in, c.out, 2, EngineOptions{})
			if err == nil {
				e.Close()
				t.Fatal("engine accepted a mismatching manifest")
			}
			if !errors.Is(err, ErrModelMismatch) {
				t.Fatalf("error %q does not wrap ErrModelMismatch", err)
			}
			if !strings.Contains(err.Error(), "tiny.onnx") || !strings.Contains(err.Error(), c.field) {
				t.Fatalf("error %q does not name the file and field %s", err, c.field)
			}
		})
	}
	t.Run("not onnx", func(t *testing.T) {
		p := filepath.Join(t.TempDir(), "backbone.onnx")
		os.WriteFile(p, []byte("not a model"), 0o644)
		if e, err := NewEngine(p, tinyInput, tinyOutputs, 2, EngineOptions{}); err == nil {
			e.Close()
			t.Fatal("engine loaded a non-ONNX file")
		}
	})
}

// TestEngineConcurrent runs distinct batches from many goroutines over a
// pool of two sessions; run with -race it also checks the engine's own
// bookkeeping.
func TestEngineConcurrent(t *testing.T) {
	e := newTinyEngine(t, EngineOptions{Sessions: 2, IntraOpThreads: 1})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := e.NewBatch(2)
			if err != nil {
				errs <- err
				return
			}
			defer b.Close()
			for range 10 {
				fillLinspace(b.Input(g % 2))
				for i := range b.Input(1 - g%2) {
					b.Input(1 - g%2)[i] = 0
				}
				if err := e.Run(b, 2); err != nil {
					errs <- err
					return
				}
				if d := math.Abs(float64(b.Features(g % 2)[0] - tinyReference[0])); d > 1e-5 {
					errs <- errors.New("wrong features under concurrency")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e.Close()
	b, _ := e.NewBatch(1)
	defer b.Close()
	if err := e.Run(b, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
}

func TestFindORTLib(t *testing.T) {
	if _, err := FindORTLib(filepath.Join(t.TempDir(), "nope.so")); !errors.Is(err, ErrORTNotFound) {
		t.Fatalf("missing explicit library: %v, want ErrORTNotFound", err)
	}
	t.Setenv(ORTLibEnv, "/nonexistent/libonnxruntime.so.1")
	c := ORTLibCandidates("")
	if c[0] != "/nonexistent/libonnxruntime.so.1" {
		t.Fatalf("env override not first: %v", c)
	}
	// The env path does not exist, so the source tree's copy is found.
	p, err := FindORTLib("")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(p, filepath.Join(".cache", "onnxruntime", ortArch(), ortLibName)) {
		t.Fatalf("found %s, want the module's .cache copy", p)
	}
	t.Chdir(t.TempDir())
	t.Setenv(ORTLibEnv, "")
	if _, err := os.Stat(filepath.Join("/usr/lib/scopewatch", ortLibName)); err == nil {
		t.Skip("an installed library exists; cannot test the not-found message")
	}
	_, err = FindORTLib("")
	if !errors.Is(err, ErrORTNotFound) || !strings.Contains(err.Error(), "make setup") || !strings.Contains(err.Error(), "/usr/lib/scopewatch") {
		t.Fatalf("not-found error %q lacks the places tried or the remedy", err)
	}
}

// benchModel is the default bundle's backbone when present (the realistic
// cost), else the tiny test model.
func benchModel(b *testing.B) (string, OutputSpec) {
	if p, _ := filepath.Abs("../models/default/backbone.onnx"); fileExists(p) {
		return p, OutputSpec{Features: "features", FeaturesDim: 576}
	}
	if p := os.Getenv("SCOPEWATCH_BENCH_BACKBONE"); p != "" {
		return p, OutputSpec{Features: "features", FeaturesDim: 576}
	}
	return tinyModel, tinyOutputs
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func BenchmarkEngineBatch(b *testing.B) {
	path, out := benchModel(b)
	for _, n := range []int{1, 8, 32} {
		b.Run("batch"+itoa(n), func(b *testing.B) {
			e, err := NewEngine(path, tinyInput, out, 2, EngineOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer e.Close()
			batch, _ := e.NewBatch(n)
			defer batch.Close()
			for s := range n {
				fillLinspace(batch.Input(s))
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := e.Run(batch, n); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "img/s")
		})
	}
}

func itoa(n int) string {
	if n < 10 {
		return string(rune('0' + n))
	}
	return itoa(n/10) + string(rune('0'+n%10))
}

// A model given as bytes loads like one opened by path; the path then only
// names it, and a failing read refuses the engine.
func TestEngineFromBytes(t *testing.T) {
	data, err := os.ReadFile(tinyModel)
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine("does-not-exist/backbone.onnx", tinyInput, tinyOutputs, 2, EngineOptions{Model: func() ([]byte, error) { return data, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	b, err := e.NewBatch(1)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	fillLinspace(b.Input(0))
	if err := e.Run(b, 1); err != nil {
		t.Fatal(err)
	}
	for i, want := range tinyReference {
		if got := b.Features(0)[i]; math.Abs(float64(got-want)) > 1e-5 {
			t.Fatalf("feature %d = %v, torch gives %v", i, got, want)
		}
	}

	errSwapped := errors.New("backbone.onnx changed since verification")
	if _, err := NewEngine(tinyModel, tinyInput, tinyOutputs, 2, EngineOptions{Model: func() ([]byte, error) { return nil, errSwapped }}); !errors.Is(err, errSwapped) {
		t.Errorf("failing Model: got %v, want %v", err, errSwapped)
	}
	if _, err := NewEngine(tinyModel, tinyInput, tinyOutputs, 2, EngineOptions{Model: func() ([]byte, error) { return data[:len(data)/2], nil }}); err == nil {
		t.Error("truncated model bytes: no error")
	}
}
