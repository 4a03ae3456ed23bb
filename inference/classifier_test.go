package inference

import (
	"context"
	"crypto/ed25519"
	"errors"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"gocv.io/x/gocv"
)

// makeBundle assembles and seals a bundle around backbone (features of
// featDim) with a seeded random head, returning the bundle folder and the
// signing key.
func makeBundle(t testing.TB, backbone string, featDim int, threshold float64) (string, ed25519.PublicKey) {
	t.Helper()
	dir := t.TempDir()
	onnx, err := os.ReadFile(backbone)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, BackboneFile), onnx, 0o644); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(42))
	const hidden = 8
	randn := func(n int, scale float64) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * scale)
		}
		return v
	}
	st, err := EncodeSafetensors(map[string]Tensor{
		HeadFC1Weight: F32Tensor([]int{hidden, featDim}, randn(hidden*featDim, 1)),
		HeadFC1Bias:   F32Tensor([]int{hidden}, randn(hidden, 0.1)),
		HeadFC2Weight: F32Tensor([]int{2, hidden}, randn(2*hidden, 1)),
		HeadFC2Bias:   F32Tensor([]int{2}, randn(2, 0.1)),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "head.safetensors"), st, 0o644); err != nil {
		t.Fatal(err)
	}
	head := "head.safetensors"
	in := tinyInput
	m := &Manifest{
		Name: "test", Version: "2026.11.28-1", Created: time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC),
		Architecture: "test", Classes: []string{"uninfected", "parasitized"}, Input: in,
		Outputs: OutputSpec{Features: "features", FeaturesDim: featDim}, Head: &head, Threshold: threshold,
	}
	raw, err := MarshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	pub, priv, err := GenerateKey(rand.New(rand.NewSource(7)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SealBundle(dir, priv); err != nil {
		t.Fatal(err)
	}
	return dir, pub
}

func openTinyClassifier(t testing.TB, opts ClassifierOptions) *Classifier {
	t.Helper()
	dir, pub := makeBundle(t, tinyModel, 16, 0.5)
	b, err := OpenBundle(dir, BundleOptions{TrustedKeys: []ed25519.PublicKey{pub}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	c, err := NewClassifier(b, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestClassifierMixedInputs classifies good and bad images in one call:
// each bad image gets its own error, every good image a result, and a
// result does not depend on the batch it landed in.
func TestClassifierMixedInputs(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	goodPNG := encodePNG(t, cellLike(131, 140))
	goodJPEG := encodeJPEG(t, cellLike(120, 128))
	var inputs []Input
	want := map[int]error{}
	for i := range 23 {
		switch i % 6 {
		case 0:
			inputs = append(inputs, Input{Path: write(filepath.Base(dir)+string(rune('a'+i))+".png", goodPNG)})
		case 1:
			inputs = append(inputs, Input{Path: "jpeg-bytes", Data: goodJPEG})
		case 2:
			inputs = append(inputs, Input{Path: write("empty"+string(rune('a'+i))+".png", nil)})
			want[i] = ErrEmpty
		case 3:
			inputs = append(inputs, Input{Path: write("text"+string(rune('a'+i))+".png", []byte("hello\n"))})
			want[i] = ErrNotImage
		case 4:
			inputs = append(inputs, Input{Path: write("cut"+string(rune('a'+i))+".png", goodPNG[:len(goodPNG)/2])})
			want[i] = ErrTruncated
		case 5:
			inputs = append(inputs, Input{Path: write("bomb"+string(rune('a'+i))+".png", pngHeaderOnly(30000, 30000))})
			want[i] = ErrTooLarge
		}
	}
	inputs = append(inputs, Input{Path: filepath.Join(dir, "missing.png")})
	want[len(inputs)-1] = os.ErrNotExist

	for _, batch := range []int{1, 4, 64} {
		c := openTinyClassifier(t, ClassifierOptions{Batch: batch, Workers: 3})
		res, err := c.Classify(context.Background(), inputs)
		if err != nil {
			t.Fatal(err)
		}
		var pngP, jpegP float64 = -1, -1
		for i, r := range res {
			if r.Index != i {
				t.Fatalf("result %d has index %d", i, r.Index)
			}
			if r.Path != inputs[i].Path {
				t.Fatalf("result %d path %q, want %q", i, r.Path, inputs[i].Path)
			}
			if w, bad := want[i]; bad {
				if !errors.Is(r.Err, w) {
					t.Fatalf("batch %d: input %d (%s): error %v, want %v", batch, i, r.Path, r.Err, w)
				}
				continue
			}
			if r.Err != nil {
				t.Fatalf("batch %d: good input %d failed: %v", batch, i, r.Err)
			}
			if !(r.PParasitized >= 0 && r.PParasitized <= 1) || len(r.Features) != 16 {
				t.Fatalf("input %d: p=%v, %d features", i, r.PParasitized, len(r.Features))
			}
			if wantLabel := map[bool]string{true: "parasitized", false: "uninfected"}[r.PParasitized >= 0.5]; r.Label != wantLabel {
				t.Fatalf("input %d: p=%v labelled %q", i, r.PParasitized, r.Label)
			}
			// Identical images must give identical outputs wherever they
			// sat in whichever batch.
			ref := &pngP
			if i%6 == 1 {
				ref = &jpegP
			}
			if *ref < 0 {
				*ref = r.PParasitized
			} else if math.Abs(*ref-r.PParasitized) > 1e-6 {
				t.Fatalf("batch %d: input %d p=%v differs from an identical image's %v", batch, i, r.PParasitized, *ref)
			}
			// The focus is the preprocessor's on this image's own tensor,
			// whichever slot it filled.
			if wantFocus := focusOfInput(t, c, inputs[i]); r.Focus != wantFocus || !(r.Focus > 0) {
				t.Fatalf("batch %d: input %d focus %v, want %v (> 0)", batch, i, r.Focus, wantFocus)
			}
		}
	}
}

// TestClassifierHeadParity checks the pipeline's probabilities against the
// head applied directly to the engine's features on the same tensor.
func TestClassifierHeadParity(t *testing.T) {
	c := openTinyClassifier(t, ClassifierOptions{Batch: 2})
	img := encodePNG(t, cellLike(128, 128))
	res, err := c.Classify(context.Background(), []Input{{Data: img}})
	if err != nil || res[0].Err != nil {
		t.Fatal(err, res[0].Err)
	}
	m, err := c.Decoder().Decode(img)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b, _ := c.Engine().NewBatch(1)
	defer b.Close()
	if err := c.Preprocessor().Mat(b.Input(0), m); err != nil {
		t.Fatal(err)
	}
	if err := c.Engine().Run(b, 1); err != nil {
		t.Fatal(err)
	}
	probs := make([]float64, 2)
	c.bundle.Head.Probabilities(b.Features(0), probs)
	if math.Abs(probs[1]-res[0].PParasitized) > 1e-9 {
		t.Fatalf("pipeline p=%v, direct p=%v", res[0].PParasitized, probs[1])
	}
	// A decoded Mat as input gives the same answer.
	res2, _ := c.Classify(context.Background(), []Input{{Mat: &m}})
	if res2[0].Err != nil || res2[0].PParasitized != res[0].PParasitized {
		t.Fatalf("Mat input: %+v, want p=%v", res2[0], res[0].PParasitized)
	}
	grey := gocv.NewMatWithSize(4, 4, gocv.MatTypeCV8UC1)
	defer grey.Close()
	res3, _ := c.Classify(context.Background(), []Input{{Mat: &grey}})
	if !errors.Is(res3[0].Err, ErrUnsupported) {
		t.Fatalf("grey Mat: %v, want ErrUnsupported", res3[0].Err)
	}
}

func TestClassifierConcurrentAndCancel(t *testing.T) {
	c := openTinyClassifier(t, ClassifierOptions{Batch: 4, Workers: 2, Engine: EngineOptions{Sessions: 2, IntraOpThreads: 1}})
	img := encodePNG(t, cellLike(100, 110))
	inputs := make([]Input, 30)
	for i := range inputs {
		inputs[i] = Input{Data: img}
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Classify(context.Background(), inputs)
			if err != nil {
				t.Error(err)
				return
			}
			for _, r := range res {
				if r.Err != nil || r.PParasitized != res[0].PParasitized {
					t.Errorf("concurrent result %+v differs from %v", r.Err, res[0].PParasitized)
					return
				}
			}
		}()
	}
	wg.Wait()

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Classify(ctx, inputs); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Classify: %v", err)
	}
	c.Close()
	if _, err := c.Classify(context.Background(), inputs); !errors.Is(err, ErrClosed) {
		t.Fatalf("Classify after Close: %v, want ErrClosed", err)
	}
}

// BenchmarkClassifier is the whole pipeline (PNG bytes in memory ->
// probability) on the default model when present.
func BenchmarkClassifier(b *testing.B) {
	path, out := benchModel(b)
	dir, pub := makeBundle(b, path, out.FeaturesDim, 0.5)
	bun, err := OpenBundle(dir, BundleOptions{TrustedKeys: []ed25519.PublicKey{pub}})
	if err != nil {
		b.Fatal(err)
	}
	defer bun.Close()
	c, err := NewClassifier(bun, ClassifierOptions{Batch: 32, NoFeatures: true})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	inputs := make([]Input, 256)
	for i := range inputs {
		inputs[i] = Input{Data: encodePNG(b, cellLike(120+i%40, 118+i%37))}
	}
	b.ResetTimer()
	n := 0
	for b.Loop() {
		res, err := c.Classify(context.Background(), inputs)
		if err != nil || res[0].Err != nil {
			b.Fatal(err, res[0].Err)
		}
		n += len(inputs)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "img/s")
}

// focusOfInput decodes and preprocesses in outside the pipeline and
// returns its focus.
func focusOfInput(t testing.TB, c *Classifier, in Input) float64 {
	t.Helper()
	data := in.Data
	if data == nil {
		var err error
		if data, err = os.ReadFile(in.Path); err != nil {
			t.Fatal(err)
		}
	}
	m, err := c.Decoder().Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	dst := make([]float32, c.Preprocessor().Size())
	if err := c.Preprocessor().Mat(dst, m); err != nil {
		t.Fatal(err)
	}
	return c.Preprocessor().Focus(dst)
}

// TestClassifierNoFocus: with NoFocus the focus is not computed (0), the
// rest of the result unchanged.
func TestClassifierNoFocus(t *testing.T) {
	in := []Input{{Path: "cell", Data: encodePNG(t, cellLike(131, 140))}}
	with, err := openTinyClassifier(t, ClassifierOptions{}).Classify(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	without, err := openTinyClassifier(t, ClassifierOptions{NoFocus: true}).Classify(context.Background(), in)
	if err != nil {
		t.Fatal(err)
	}
	if !(with[0].Focus > 0) || without[0].Focus != 0 || with[0].PParasitized != without[0].PParasitized {
		t.Fatalf("focus %v / %v (NoFocus), p %v / %v", with[0].Focus, without[0].Focus, with[0].PParasitized, without[0].PParasitized)
	}
}
