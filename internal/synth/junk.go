package synth

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// JunkKinds are the kinds of image Junk renders: things that are not a red
// blood cell the model can judge, for testing and measuring the
// plausibility gate (scripts/ood/junk writes a corpus of them):
//
//	noise     uniform RGB noise
//	black     solid near-black
//	white     solid near-white
//	color     solid random colours
//	grad      colour gradients
//	blocks    8 px blocks of random colours
//	text      dark text on white paper, or light text on black
//	texture   natural-image-like colour textures (1/f noise, several octaves)
//	blank     an empty stretch of a stained smear (pale background, sensor noise)
//	foreign   things on black, at a red cell's size, that are not red cells:
//	          squares, fibres, crystals, dust, blue/green discs, cell-shaped
//	          cut-outs of noise, texture, text, flat pink and grey texture
//	defocus   a nominal crop blurred with a Gaussian of sigma 4-6 px
//	small     a nominal crop shrunk 3x on black (wrong magnification)
//	zoomed    a nominal crop's centre blown up 3x (wrong magnification)
var JunkKinds = []string{"noise", "black", "white", "color", "grad", "blocks", "text", "texture", "blank", "foreign", "defocus", "small", "zoomed"}

// JunkNeedsNominal reports whether kind is made from a nominal crop.
func JunkNeedsNominal(kind string) bool {
	return kind == "defocus" || kind == "small" || kind == "zoomed"
}

const side = 128

// Junk renders the i-th junk image of kind (128 px) from seed; nominal is
// the crop the defocus, small and zoomed kinds are made from (ignored by
// the others). Every (seed, kind, i) gives its own image.
func Junk(kind string, i int, seed uint64, nominal image.Image) (image.Image, error) {
	k := slices.Index(JunkKinds, kind)
	if k < 0 {
		return nil, fmt.Errorf("junk kind %q: want one of %s", kind, strings.Join(JunkKinds, ", "))
	}
	if JunkNeedsNominal(kind) && nominal == nil {
		return nil, fmt.Errorf("junk kind %s is made from a nominal crop: none given", kind)
	}
	r := rand.New(rand.NewPCG(seed, uint64(i)<<8|uint64(k)))
	rnd := func(lo, hi int) uint8 { return uint8(lo + r.IntN(hi-lo+1)) }
	switch kind {
	case "noise":
		n := image.NewRGBA(image.Rect(0, 0, side, side))
		for j := range n.Pix {
			n.Pix[j] = uint8(r.UintN(256))
			if j%4 == 3 {
				n.Pix[j] = 255
			}
		}
		return n, nil
	case "black":
		v := uint8(r.IntN(20))
		return solid(color.RGBA{v, v, v, 255}), nil
	case "white":
		v := uint8(235 + r.IntN(21))
		return solid(color.RGBA{v, v, v, 255}), nil
	case "color":
		return solid(color.RGBA{uint8(r.UintN(256)), uint8(r.UintN(256)), uint8(r.UintN(256)), 255}), nil
	case "grad":
		g := image.NewRGBA(image.Rect(0, 0, side, side))
		b := uint8(r.IntN(256))
		for y := range side {
			for x := range side {
				g.Set(x, y, color.RGBA{uint8(2 * x), uint8(2 * y), b, 255})
			}
		}
		return g, nil
	case "blocks":
		b := image.NewRGBA(image.Rect(0, 0, side, side))
		for by := range 16 {
			for bx := range 16 {
				c := color.RGBA{uint8(r.UintN(256)), uint8(r.UintN(256)), uint8(r.UintN(256)), 255}
				draw.Draw(b, image.Rect(bx*8, by*8, bx*8+8, by*8+8), &image.Uniform{c}, image.Point{}, draw.Src)
			}
		}
		return b, nil
	case "text":
		return text(r, i%2 == 1), nil
	case "texture":
		return texture(r), nil
	case "blank":
		return blank(r), nil
	case "foreign":
		return foreign(r, i%10, rnd), nil
	}
	m := image.NewRGBA(nominal.Bounds().Sub(nominal.Bounds().Min))
	draw.Draw(m, m.Bounds(), nominal, nominal.Bounds().Min, draw.Src)
	switch kind {
	case "defocus":
		return blur(m, 4+2*r.Float64()), nil
	case "small":
		return rescale(m, 1.0/3), nil
	default: // zoomed
		return rescale(m, 3), nil
	}
}

func solid(c color.RGBA) *image.RGBA {
	m := image.NewRGBA(image.Rect(0, 0, side, side))
	draw.Draw(m, m.Bounds(), &image.Uniform{c}, image.Point{}, draw.Src)
	return m
}

func clamp(v float64) uint8 { return uint8(max(0, min(255, math.Round(v)))) }

// text draws lines of random words, scaled up 2x so strokes are a few
// pixels wide, as on a photographed label or screen.
func text(r *rand.Rand, inverse bool) image.Image {
	small := image.NewRGBA(image.Rect(0, 0, side/2, side/2))
	bg, fg := color.RGBA{245, 245, 240, 255}, color.RGBA{20, 20, 30, 255}
	if inverse {
		bg, fg = color.RGBA{0, 0, 0, 255}, color.RGBA{230, 230, 230, 255}
	}
	draw.Draw(small, small.Bounds(), &image.Uniform{bg}, image.Point{}, draw.Src)
	d := &font.Drawer{Dst: small, Src: &image.Uniform{fg}, Face: basicfont.Face7x13}
	words := []string{"slide", "patient", "Giemsa", "lot 42", "thin", "smear", "x100", "oil", "ID 7731", "2026"}
	for line := range 5 {
		d.Dot = fixed.P(1, 11+line*12)
		var s []string
		for range 2 {
			s = append(s, words[r.IntN(len(words))])
		}
		d.DrawString(strings.Join(s, " "))
	}
	big := image.NewRGBA(image.Rect(0, 0, side, side))
	for y := range side {
		for x := range side {
			big.Set(x, y, small.At(x/2, y/2))
		}
	}
	return big
}

// texture is a sum of value-noise octaves with amplitude falling as 1/f,
// in three correlated colour channels: the statistics of natural images
// (foliage, fabric, wood) without any cell in it.
func texture(r *rand.Rand) image.Image {
	var field [3][side * side]float64
	base := [3]float64{60 + r.Float64()*140, 60 + r.Float64()*140, 60 + r.Float64()*140}
	for c := range 3 {
		amp := 60.0
		for cells := 4; cells <= 64; cells *= 2 {
			grid := make([]float64, (cells+1)*(cells+1))
			for k := range grid {
				grid[k] = r.Float64()*2 - 1
			}
			for y := range side {
				for x := range side {
					fx, fy := float64(x)*float64(cells)/side, float64(y)*float64(cells)/side
					x0, y0 := int(fx), int(fy)
					tx, ty := fx-float64(x0), fy-float64(y0)
					at := func(i, j int) float64 { return grid[j*(cells+1)+i] }
					v := (at(x0, y0)*(1-tx)+at(x0+1, y0)*tx)*(1-ty) + (at(x0, y0+1)*(1-tx)+at(x0+1, y0+1)*tx)*ty
					field[c][y*side+x] += amp * v
				}
			}
			amp /= 2
		}
	}
	m := image.NewRGBA(image.Rect(0, 0, side, side))
	for i := range side * side {
		// Channels share part of their variation, as in natural images.
		shared := (field[0][i] + field[1][i] + field[2][i]) / 3
		m.Pix[4*i] = clamp(base[0] + 0.5*field[0][i] + 0.5*shared)
		m.Pix[4*i+1] = clamp(base[1] + 0.5*field[1][i] + 0.5*shared)
		m.Pix[4*i+2] = clamp(base[2] + 0.5*field[2][i] + 0.5*shared)
		m.Pix[4*i+3] = 255
	}
	return m
}

// blank is a crop of a smear where there is no cell: the pale, slightly
// pink background of a stained slide, with vignetting and sensor noise.
func blank(r *rand.Rand) image.Image {
	bg := [3]float64{215 + r.Float64()*30, 195 + r.Float64()*30, 205 + r.Float64()*30}
	m := image.NewRGBA(image.Rect(0, 0, side, side))
	for y := range side {
		for x := range side {
			dx, dy := float64(x-side/2)/side, float64(y-side/2)/side
			v := 1 - 0.15*(dx*dx+dy*dy)
			i := 4 * (y*side + x)
			for c := range 3 {
				m.Pix[i+c] = clamp(bg[c]*v + r.NormFloat64()*3)
			}
			m.Pix[i+3] = 255
		}
	}
	return m
}

// foreign draws something that is not a red cell on black, at a red
// cell's size (so that the share of black background does not give it
// away), as a segmentation or a cropping tool could hand over: a
// cell-coloured square, a thick fibre, a white crystal, grey-brown dust, a
// blue or green disc, and cell-shaped cut-outs of noise, texture, text, a
// flat pink and a grey cell-like texture.
func foreign(r *rand.Rand, which int, rnd func(lo, hi int) uint8) image.Image {
	m := solid(color.RGBA{0, 0, 0, 255})
	c := side / 2
	disc := func(rad float64, src image.Image) {
		for y := range side {
			for x := range side {
				if math.Hypot(float64(x-c), float64(y-c)) < rad {
					m.Set(x, y, src.At(x, y))
				}
			}
		}
	}
	switch which {
	case 0: // square, cell-coloured, with mild texture
		col := [3]float64{float64(rnd(170, 210)), float64(rnd(90, 130)), float64(rnd(120, 160))}
		for y := c - 44; y < c+44; y++ {
			for x := c - 44; x < c+44; x++ {
				i := 4 * (y*side + x)
				for k := range 3 {
					m.Pix[i+k] = clamp(col[k] + r.NormFloat64()*20)
				}
			}
		}
	case 1: // fibre: a thick band at an angle, corner to corner
		a := r.Float64() * math.Pi
		col := color.RGBA{rnd(150, 220), rnd(140, 200), rnd(100, 160), 255}
		for y := range side {
			for x := range side {
				dx, dy := float64(x-c), float64(y-c)
				if d := math.Abs(-math.Sin(a)*dx + math.Cos(a)*dy); d < 18 && math.Hypot(dx, dy) < 60 {
					m.Set(x, y, col)
				}
			}
		}
	case 2: // crystal: a white six-pointed star
		for y := range side {
			for x := range side {
				dx, dy := float64(x-c), float64(y-c)
				rr, t := math.Hypot(dx, dy), math.Atan2(dy, dx)
				if rr < 30+26*math.Abs(math.Cos(3*t)) {
					v := rnd(225, 255)
					m.Set(x, y, color.RGBA{v, v, v, 255})
				}
			}
		}
	case 3: // dust: an irregular grey-brown blob
		rad := 40 + r.Float64()*10
		ph := r.Float64() * 6
		for y := range side {
			for x := range side {
				dx, dy := float64(x-c), float64(y-c)
				t := math.Atan2(dy, dx)
				if math.Hypot(dx, dy) < rad*(1+0.2*math.Sin(5*t+ph)) {
					g := float64(rnd(90, 130))
					m.Set(x, y, color.RGBA{clamp(g + 15), clamp(g), clamp(g - 20), 255})
				}
			}
		}
	case 4: // a disc in a colour no stain gives: blue or green
		col := color.RGBA{rnd(20, 60), rnd(120, 200), rnd(40, 90), 255}
		if r.IntN(2) == 0 {
			col = color.RGBA{rnd(30, 70), rnd(60, 110), rnd(170, 230), 255}
		}
		disc(45, &image.Uniform{col})
	case 5: // noise cut to a cell
		n := image.NewRGBA(image.Rect(0, 0, side, side))
		for j := range n.Pix {
			n.Pix[j] = uint8(r.UintN(256))
		}
		disc(45, n)
	case 6: // natural texture cut to a cell
		disc(45, texture(r))
	case 7: // text cut to a cell
		disc(45, text(r, false))
	case 8: // flat cell pink, no texture at all
		disc(45, &image.Uniform{color.RGBA{rnd(170, 210), rnd(90, 130), rnd(120, 160), 255}})
	case 9: // a grey "cell": cell-like brightness and texture, no stain colour
		t := texture(r)
		g := image.NewRGBA(t.Bounds())
		for y := range side {
			for x := range side {
				rr, gg, bb, _ := t.At(x, y).RGBA()
				v := clamp(150 + 0.5*(float64(rr+gg+bb)/3/257-128))
				g.Set(x, y, color.RGBA{v, v, v, 255})
			}
		}
		disc(45, g)
	}
	return m
}

// blur is a separable Gaussian blur of the whole crop (defocus spreads the
// cell's outline into the background as well as its interior).
func blur(m *image.RGBA, sigma float64) *image.RGBA {
	rad := int(math.Ceil(3 * sigma))
	k := make([]float64, 2*rad+1)
	var sum float64
	for i := range k {
		x := float64(i - rad)
		k[i] = math.Exp(-x * x / (2 * sigma * sigma))
		sum += k[i]
	}
	for i := range k {
		k[i] /= sum
	}
	wd, ht := m.Bounds().Dx(), m.Bounds().Dy()
	pass := func(src *image.RGBA, dx, dy int) *image.RGBA {
		dst := image.NewRGBA(src.Bounds())
		for y := range ht {
			for x := range wd {
				var acc [3]float64
				for t, kv := range k {
					xx := min(max(x+dx*(t-rad), 0), wd-1)
					yy := min(max(y+dy*(t-rad), 0), ht-1)
					i := src.PixOffset(xx, yy)
					for c := range 3 {
						acc[c] += kv * float64(src.Pix[i+c])
					}
				}
				i := dst.PixOffset(x, y)
				for c := range 3 {
					dst.Pix[i+c] = clamp(acc[c])
				}
				dst.Pix[i+3] = 255
			}
		}
		return dst
	}
	return pass(pass(m, 1, 0), 0, 1)
}

// rescale scales m about its centre by s (nearest neighbour) on black, at
// m's size: s < 1 is a cell far too small, s > 1 one far too large.
func rescale(m *image.RGBA, s float64) *image.RGBA {
	wd, ht := m.Bounds().Dx(), m.Bounds().Dy()
	dst := image.NewRGBA(m.Bounds())
	for y := range ht {
		for x := range wd {
			sx := int(math.Floor((float64(x)-float64(wd)/2)/s + float64(wd)/2))
			sy := int(math.Floor((float64(y)-float64(ht)/2)/s + float64(ht)/2))
			i := dst.PixOffset(x, y)
			dst.Pix[i+3] = 255
			if sx < 0 || sy < 0 || sx >= wd || sy >= ht {
				continue
			}
			copy(dst.Pix[i:i+3], m.Pix[m.PixOffset(sx, sy):])
		}
	}
	return dst
}
