package inference

import (
	"math"
	"os"
	"testing"
)

var recipeSpec = InputSpec{
	Name: "image", Width: 128, Height: 128, Layout: "NCHW", Color: "RGB",
	Scale: 1.0 / 255, Mean: [3]float64{0.485, 0.456, 0.406}, Std: [3]float64{0.229, 0.224, 0.225},
}

// TestPreprocessHandComputed checks resize, channel order, normalisation and
// layout on a 4x2 image shrunk to 2x1, against values worked out by hand.
func TestPreprocessHandComputed(t *testing.T) {
	// BGR pixels, row-major. Shrinking 4x2 to 2x1: scale 2 on both axes,
	// source coordinate 2*(o+0.5)-0.5 = 0.5 and 2.5 along x, 0.5 along y,
	// so every output is the plain mean of a 2x2 block.
	pix := []byte{
		// y=0: x=0..3
		10, 20, 30, 12, 22, 32, 100, 0, 255, 102, 0, 255,
		// y=1
		14, 24, 34, 16, 26, 36, 104, 4, 255, 106, 5, 254,
	}
	// Block means (B,G,R): left (13, 23, 33); right (103, 2.25, 254.75),
	// rounded half to even: (103, 2, 255).
	spec := InputSpec{Width: 2, Height: 1, Layout: "NCHW", Color: "RGB", Scale: 0.5, Mean: [3]float64{1, 2, 3}, Std: [3]float64{2, 4, 8}}
	// value = (v*0.5 - mean[c]) / std[c], channels R, G, B.
	r := func(v float64) float32 { return float32((v*0.5 - 1) / 2) }
	g := func(v float64) float32 { return float32((v*0.5 - 2) / 4) }
	b := func(v float64) float32 { return float32((v*0.5 - 3) / 8) }
	wantNCHW := []float32{r(33), r(255), g(23), g(2), b(13), b(103)}
	wantNHWC := []float32{r(33), g(23), b(13), r(255), g(2), b(103)}
	bgr := spec
	bgr.Color = "BGR"
	wantBGR := []float32{
		float32((13*0.5 - 1) / 2), float32((103*0.5 - 1) / 2),
		float32((23*0.5 - 2) / 4), float32((2*0.5 - 2) / 4),
		float32((33*0.5 - 3) / 8), float32((255*0.5 - 3) / 8),
	}
	nhwc := spec
	nhwc.Layout = "NHWC"
	for _, c := range []struct {
		name string
		spec InputSpec
		want []float32
	}{{"NCHW RGB", spec, wantNCHW}, {"NHWC RGB", nhwc, wantNHWC}, {"NCHW BGR", bgr, wantBGR}} {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewPreprocessor(c.spec)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]float32, p.Size())
			if err := p.BGR(got, pix, 4, 2); err != nil {
				t.Fatal(err)
			}
			for i := range got {
				if math.Abs(float64(got[i]-c.want[i])) > 1e-6 {
					t.Fatalf("value %d = %v, want %v (all: %v, want %v)", i, got[i], c.want[i], got, c.want)
				}
			}
		})
	}
}

// TestPreprocessMatchesRecipe compares the whole decode + preprocess path
// with the training recipe's own resize (testdata/gen_preprocess.py runs
// models/recipe/common.py's load_image on the same PNGs): the 8-bit pixels
// must be identical, so the tensors are identical.
func TestPreprocessMatchesRecipe(t *testing.T) {
	d := NewDecoder(DecodeOptions{})
	// Identity normalisation exposes the resized 8-bit values themselves.
	spec := recipeSpec
	spec.Layout, spec.Scale, spec.Mean, spec.Std = "NHWC", 1, [3]float64{}, [3]float64{1, 1, 1}
	p, err := NewPreprocessor(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"down", "up", "mixed", "rgba", "grey16"} {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile("testdata/pre_" + name + ".png")
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile("testdata/pre_" + name + ".rgb")
			if err != nil {
				t.Fatal(err)
			}
			m, err := d.Decode(data)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			got := make([]float32, p.Size())
			if err := p.Mat(got, m); err != nil {
				t.Fatal(err)
			}
			diff := 0
			for i := range got {
				if got[i] != float32(want[i]) {
					if diff == 0 {
						t.Errorf("first difference at pixel %d channel %d: got %v, want %d", i/3, i%3, got[i], want[i])
					}
					diff++
				}
			}
			if diff > 0 {
				t.Fatalf("%d of %d values differ from the recipe", diff, len(got))
			}
		})
	}
}

func TestPreprocessRejects(t *testing.T) {
	bad := []InputSpec{
		{Width: 0, Height: 4, Layout: "NCHW", Color: "RGB", Scale: 1, Std: [3]float64{1, 1, 1}},
		{Width: 4, Height: 4, Layout: "CHW", Color: "RGB", Scale: 1, Std: [3]float64{1, 1, 1}},
		{Width: 4, Height: 4, Layout: "NCHW", Color: "RGBA", Scale: 1, Std: [3]float64{1, 1, 1}},
		{Width: 4, Height: 4, Layout: "NCHW", Color: "RGB", Scale: 0, Std: [3]float64{1, 1, 1}},
		{Width: 4, Height: 4, Layout: "NCHW", Color: "RGB", Scale: 1, Std: [3]float64{1, 0, 1}},
	}
	for i, s := range bad {
		if _, err := NewPreprocessor(s); err == nil {
			t.Errorf("spec %d accepted: %+v", i, s)
		}
	}
	p, err := NewPreprocessor(recipeSpec)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.BGR(make([]float32, p.Size()), make([]byte, 10), 4, 4); err == nil {
		t.Error("short pixel buffer accepted")
	}
	if err := p.BGR(make([]float32, 5), make([]byte, 48), 4, 4); err == nil {
		t.Error("short destination accepted")
	}
}

func BenchmarkPreprocess(b *testing.B) {
	p, err := NewPreprocessor(recipeSpec)
	if err != nil {
		b.Fatal(err)
	}
	w, h := 136, 141
	pix := make([]byte, w*h*3)
	for i := range pix {
		pix[i] = byte(i * 7)
	}
	dst := make([]float32, p.Size())
	b.ReportAllocs()
	for b.Loop() {
		if err := p.BGR(dst, pix, w, h); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPreprocessFixedMatchesFloat checks the integer fast path against the
// float32 path it replaces, on sizes where both apply.
func TestPreprocessFixedMatchesFloat(t *testing.T) {
	p, err := NewPreprocessor(recipeSpec)
	if err != nil {
		t.Fatal(err)
	}
	for _, sz := range [][2]int{{1, 1}, {7, 300}, {127, 129}, {128, 128}, {151, 139}, {400, 90}} {
		w, h := sz[0], sz[1]
		pix := make([]byte, w*h*3)
		for i := range pix {
			pix[i] = byte((i*7919 + i/3*31) % 256)
		}
		xt, yt := p.table(w, 128), p.table(h, 128)
		if !xt.exact || !yt.exact {
			t.Fatalf("%dx%d -> 128x128 not on the exact path", w, h)
		}
		a, b := make([]float32, p.Size()), make([]float32, p.Size())
		p.resizeFixed(a, pix, w, xt, yt)
		p.resizeFloat(b, pix, w, xt, yt)
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("%dx%d: value %d fixed %v, float %v", w, h, i, a[i], b[i])
			}
		}
	}
	// 3 is not a power of two: weights are not multiples of 1/256.
	if p.table(10, 3).exact {
		t.Error("10 -> 3 claimed exact")
	}
}

func BenchmarkPreprocessFloat(b *testing.B) {
	p, err := NewPreprocessor(recipeSpec)
	if err != nil {
		b.Fatal(err)
	}
	w, h := 136, 141
	pix := make([]byte, w*h*3)
	dst := make([]float32, p.Size())
	xt, yt := p.table(w, 128), p.table(h, 128)
	for b.Loop() {
		p.resizeFloat(dst, pix, w, xt, yt)
	}
}
