package inference

import (
	"image"
	"math"
	"os"
	"slices"
	"testing"

	"github.com/scopewatch/scopewatch/internal/synth"
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

// synthCropBGR renders synth crop i of a run as packed BGR.
func synthCropBGR(seed int64, k synth.Knobs, i int) ([]byte, int, int) {
	img := synth.CellAt(seed, k, 4, i).Image.(*image.RGBA)
	w, h := img.Bounds().Dx(), img.Bounds().Dy()
	bgr := make([]byte, w*h*3)
	for p := range w * h {
		bgr[3*p], bgr[3*p+1], bgr[3*p+2] = img.Pix[4*p+2], img.Pix[4*p+1], img.Pix[4*p]
	}
	return bgr, w, h
}

// focusOf preprocesses pix and returns its focus.
func focusOf(t testing.TB, p *Preprocessor, pix []byte, w, h int) float64 {
	t.Helper()
	dst := make([]float32, p.Size())
	if err := p.BGR(dst, pix, w, h); err != nil {
		t.Fatal(err)
	}
	return p.Focus(dst)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// TestFocusFallsWithBlur renders the same cells (same slides, same noise
// draws) with more and more added defocus: the focus must fall with every
// step, in the median and cell by cell.
func TestFocusFallsWithBlur(t *testing.T) {
	p, err := NewPreprocessor(recipeSpec)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	blurs := []float64{0, 0.75, 1.5, 3}
	focus := make([][]float64, len(blurs))
	for bi, b := range blurs {
		for i := range n {
			pix, w, h := synthCropBGR(31, synth.Knobs{Blur: b}, i)
			focus[bi] = append(focus[bi], focusOf(t, p, pix, w, h))
		}
	}
	for bi := 1; bi < len(blurs); bi++ {
		m0, m1 := median(focus[bi-1]), median(focus[bi])
		if !(m1 < m0) {
			t.Errorf("median focus %.1f at blur %v, %.1f at blur %v: want it to fall", m0, blurs[bi-1], m1, blurs[bi])
		}
		var lower int
		for i := range n {
			if focus[bi][i] < focus[bi-1][i] {
				lower++
			}
		}
		// Sensor noise sets a floor the Laplacian cannot go below, and a
		// strong blur carries the bright surround's edge (blurred before
		// the crop is masked) into the measured interior, so past the
		// noise floor some cells stay level or rise a little.
		if lower < n*3/4 {
			t.Errorf("blur %v -> %v: focus fell for %d of %d cells; want at least 75%%", blurs[bi-1], blurs[bi], lower, n)
		}
	}
}

// TestFocusBrightness checks that a brightness change (an offset added to
// every channel, as a lamp or exposure change gives) hardly moves the
// focus: within 10% in the median over cells. It moves at all only through
// clipping and 8-bit rounding; a measure normalised by mean brightness
// would move by about twice the relative brightness change.
func TestFocusBrightness(t *testing.T) {
	p, err := NewPreprocessor(recipeSpec)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	var base []float64
	for i := range n {
		pix, w, h := synthCropBGR(37, synth.Knobs{}, i)
		base = append(base, focusOf(t, p, pix, w, h))
	}
	for _, br := range []float64{-0.1, 0.1} {
		var ratio []float64
		for i := range n {
			pix, w, h := synthCropBGR(37, synth.Knobs{Brightness: br}, i)
			ratio = append(ratio, focusOf(t, p, pix, w, h)/base[i])
		}
		if r := median(ratio); math.Abs(r-1) > 0.10 {
			t.Errorf("brightness %+v: median focus ratio %.3f; want within 10%% of 1", br, r)
		}
	}
}

// TestFocusExact checks the measure on hand-made images: blank and
// uniform images have focus 0, a constant offset leaves it exactly
// unchanged, a doubled contrast quadruples it, and both layouts agree.
func TestFocusExact(t *testing.T) {
	const s = 128
	pattern := func(offset, gain int) []byte {
		pix := make([]byte, s*s*3)
		for y := 8; y < s-8; y++ {
			for x := 8; x < s-8; x++ {
				v := byte(100 + offset + gain*((x*7+y*13)%9))
				pix[3*(y*s+x)], pix[3*(y*s+x)+1], pix[3*(y*s+x)+2] = v, v, v
			}
		}
		return pix
	}
	nchw, _ := NewPreprocessor(recipeSpec)
	nhwcSpec := recipeSpec
	nhwcSpec.Layout, nhwcSpec.Color = "NHWC", "BGR"
	nhwc, _ := NewPreprocessor(nhwcSpec)
	if f := focusOf(t, nchw, make([]byte, s*s*3), s, s); f != 0 {
		t.Errorf("black image: focus %v, want 0", f)
	}
	uniform := pattern(0, 0)
	if f := focusOf(t, nchw, uniform, s, s); f > 1e-6 {
		t.Errorf("uniform cell: focus %v, want 0", f)
	}
	f0 := focusOf(t, nchw, pattern(0, 4), s, s)
	if !(f0 > 100) {
		t.Fatalf("textured cell: focus %v, want well above 0", f0)
	}
	if f := focusOf(t, nchw, pattern(40, 4), s, s); math.Abs(f-f0) > 1e-3*f0 {
		t.Errorf("offset +40: focus %v, want %v", f, f0)
	}
	if f := focusOf(t, nchw, pattern(0, 8), s, s); math.Abs(f-4*f0) > 1e-3*f0 {
		t.Errorf("contrast x2: focus %v, want %v", f, 4*f0)
	}
	if f := focusOf(t, nhwc, pattern(0, 4), s, s); math.Abs(f-f0) > 1e-3*f0 {
		t.Errorf("NHWC/BGR: focus %v, NCHW/RGB %v", f, f0)
	}
	if f := nchw.Focus(make([]float32, 10)); f != 0 {
		t.Errorf("wrong-sized input: focus %v, want 0", f)
	}
}

func BenchmarkFocus(b *testing.B) {
	p, err := NewPreprocessor(recipeSpec)
	if err != nil {
		b.Fatal(err)
	}
	pix, w, h := synthCropBGR(41, synth.Knobs{}, 0)
	dst := make([]float32, p.Size())
	if err := p.BGR(dst, pix, w, h); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		p.Focus(dst)
	}
}
