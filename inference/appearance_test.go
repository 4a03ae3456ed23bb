package inference

import (
	"image"
	"image/color"
	"math"
	"testing"
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
				if got := p.Focus(in); a.Focus != got {
					t.Fatalf("focus %v, Focus says %v", a.Focus, got)
				}
				if v := a.Values(); len(v) != len(AppearanceNames) || v[0] != a.Background || v[len(v)-1] != a.Focus {
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
