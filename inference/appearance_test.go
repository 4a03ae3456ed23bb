package inference

import (
	"image"
	"image/color"
	"math"
	"testing"

	"github.com/scopewatch/scopewatch/internal/synth"
)

// Appearance reads the statistics back in 8-bit RGB whatever the layout and
// channel order, on images whose values are known by construction.
func TestAppearanceOfKnownImages(t *testing.T) {
	disc := func(fg color.RGBA) *image.RGBA {
		m := image.NewRGBA(image.Rect(0, 0, 128, 128))
		for y := range 128 {
			for x := range 128 {
				c := color.RGBA{0, 0, 0, 255}
				if math.Hypot(float64(x)-63.5, float64(y)-63.5) < 40 {
					c = fg
				}
				m.Set(x, y, c)
			}
		}
		return m
	}
	solid := func(c color.RGBA) *image.RGBA {
		m := image.NewRGBA(image.Rect(0, 0, 128, 128))
		for i := 0; i < len(m.Pix); i += 4 {
			m.Pix[i], m.Pix[i+1], m.Pix[i+2], m.Pix[i+3] = c.R, c.G, c.B, 255
		}
		return m
	}
	// A disc of radius 40 covers pi*40^2 of 128^2 pixels.
	discBg := 1 - math.Pi*40*40/(128*128)
	for _, tc := range []struct {
		name       string
		img        image.Image
		background float64
		border     float64
		mean       [3]float64
		saturation float64
	}{
		{"pink disc on black", disc(color.RGBA{200, 100, 150, 255}), discBg, 0, [3]float64{200, 100, 150}, 0.5},
		{"solid white", solid(color.RGBA{240, 240, 240, 255}), 0, 1, [3]float64{240, 240, 240}, 0},
		{"solid black", solid(color.RGBA{0, 0, 0, 255}), 1, 0, [3]float64{}, 0},
		{"solid blue", solid(color.RGBA{10, 20, 200, 255}), 0, 1, [3]float64{10, 20, 200}, 0.95},
	} {
		for _, layout := range []struct{ layout, color string }{{"NCHW", "RGB"}, {"NHWC", "BGR"}} {
			t.Run(tc.name+"/"+layout.layout+layout.color, func(t *testing.T) {
				spec := recipeSpec
				spec.Layout, spec.Color = layout.layout, layout.color
				p, err := NewPreprocessor(spec)
				if err != nil {
					t.Fatal(err)
				}
				m, err := NewDecoder(DecodeOptions{}).Decode(encodePNG(t, tc.img))
				if err != nil {
					t.Fatal(err)
				}
				defer m.Close()
				in := make([]float32, p.Size())
				if err := p.Mat(in, m); err != nil {
					t.Fatal(err)
				}
				a := p.Appearance(in)
				// The disc's edge is a few hundred pixels; resizing 128 to
				// 128 is exact, so only float rounding separates the values.
				if math.Abs(a.Background-tc.background) > 0.01 || math.Abs(a.Border-tc.border) > 1e-9 {
					t.Fatalf("background %v border %v, want %v %v", a.Background, a.Border, tc.background, tc.border)
				}
				for k := range 3 {
					if math.Abs(a.Mean[k]-tc.mean[k]) > 0.01 || a.Std[k] > 0.01 {
						t.Fatalf("mean %v std %v, want %v and 0", a.Mean, a.Std, tc.mean)
					}
				}
				if math.Abs(a.Saturation-tc.saturation) > 0.001 {
					t.Fatalf("saturation %v, want %v", a.Saturation, tc.saturation)
				}
				// A flat disc has no detail at either scale.
				if math.Abs(a.Sharpness) > 0.01 {
					t.Fatalf("sharpness %v of a flat disc, want 0", a.Sharpness)
				}
				if got := p.Focus(in); a.Focus != got {
					t.Fatalf("focus %v, Focus says %v", a.Focus, got)
				}
				if v := a.Values(); len(v) != len(AppearanceNames) || v[0] != a.Background || v[len(v)-2] != a.Focus || v[len(v)-1] != a.Sharpness {
					t.Fatalf("Values %v do not follow AppearanceNames %v", v, AppearanceNames)
				}
			})
		}
	}
}

// Texture shows in the standard deviation: noise inside the cell raises
// it, a flat cell has none.
func TestAppearanceStdFollowsTexture(t *testing.T) {
	p, err := NewPreprocessor(recipeSpec)
	if err != nil {
		t.Fatal(err)
	}
	m := image.NewRGBA(image.Rect(0, 0, 128, 128))
	for y := range 128 {
		for x := range 128 {
			// Checkerboard of two levels around 150: std 50 in every channel.
			v := uint8(100)
			if (x+y)%2 == 0 {
				v = 200
			}
			m.Set(x, y, color.RGBA{v, v, v, 255})
		}
	}
	dm, err := NewDecoder(DecodeOptions{}).Decode(encodePNG(t, m))
	if err != nil {
		t.Fatal(err)
	}
	defer dm.Close()
	in := make([]float32, p.Size())
	if err := p.Mat(in, dm); err != nil {
		t.Fatal(err)
	}
	a := p.Appearance(in)
	for k := range 3 {
		if math.Abs(a.Std[k]-50) > 0.01 || math.Abs(a.Mean[k]-150) > 0.01 {
			t.Fatalf("checkerboard: mean %v std %v, want 150 and 50", a.Mean, a.Std)
		}
	}
}

// TestSharpnessFallsWithBlurNotWithNoise renders the same cells with added
// defocus and added sensor noise. Focus rises with noise as much as it
// falls with blur, so a noisy blurred slide can read as a sharp one;
// sharpness must fall with every blur step (in the median and for most
// cells) and stay low when noise is added to a blurred cell. The added
// noise (0.01 in quadrature with the slide's own 0.004..0.012) keeps
// within what nominal slides have; at 0.02 (5 grey levels) the noise
// dominates both scales and sharpness reads nominal again, a limit of
// the measure.
func TestSharpnessFallsWithBlurNotWithNoise(t *testing.T) {
	p, err := NewPreprocessor(recipeSpec)
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	measure := func(k synth.Knobs) (sharp, focus []float64) {
		for i := range n {
			pix, w, h := synthCropBGR(31, k, i)
			dst := make([]float32, p.Size())
			if err := p.BGR(dst, pix, w, h); err != nil {
				t.Fatal(err)
			}
			a := p.Appearance(dst)
			sharp, focus = append(sharp, a.Sharpness), append(focus, a.Focus)
		}
		return sharp, focus
	}
	blurs := []float64{0, 1, 2}
	sharp := make([][]float64, len(blurs))
	for bi, b := range blurs {
		sharp[bi], _ = measure(synth.Knobs{Blur: b})
	}
	for bi := 1; bi < len(blurs); bi++ {
		m0, m1 := median(sharp[bi-1]), median(sharp[bi])
		if !(m1 < m0) {
			t.Errorf("median sharpness %.3f at blur %v, %.3f at blur %v: want it to fall", m0, blurs[bi-1], m1, blurs[bi])
		}
		var lower int
		for i := range n {
			if sharp[bi][i] < sharp[bi-1][i] {
				lower++
			}
		}
		if lower < n*9/10 {
			t.Errorf("blur %v -> %v: sharpness fell for %d of %d cells; want at least 90%%", blurs[bi-1], blurs[bi], lower, n)
		}
	}
	_, focusBlur := measure(synth.Knobs{Blur: 2})
	sharpNoisy, focusNoisy := measure(synth.Knobs{Blur: 2, Noise: 0.01})
	_, focus0 := measure(synth.Knobs{})
	if !(median(focusNoisy) > median(focusBlur)) {
		t.Errorf("focus %.1f blurred, %.1f blurred and noisy: the test expects noise to raise focus", median(focusBlur), median(focusNoisy))
	}
	if got, sharp0 := median(sharpNoisy), median(sharp[0]); !(got < (sharp0+median(sharp[2]))/2) {
		t.Errorf("sharpness of blurred noisy cells %.3f, blurred %.3f, nominal %.3f: noise brought it back towards nominal (focus %.1f, nominal %.1f)",
			got, median(sharp[2]), sharp0, median(focusNoisy), median(focus0))
	}
}
