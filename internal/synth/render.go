package synth

import (
	"image"
	"math"
	"math/rand"
	"sync"
)

// Images are composed in optical density (Beer-Lambert): every stained
// structure adds absorbance per channel and the transmitted light is
// illumination*exp(-OD). Overlapping cells therefore darken naturally, and
// a stain's colour is a single OD vector that a hue shift can rotate.

type odVec [3]float32

// odOf returns the OD vector of a stain that transmits rgb (0..1) at unit
// amount.
func odOf(rgb [3]float64) odVec {
	var v odVec
	for i, c := range rgb {
		c = math.Max(c, 0.01)
		v[i] = float32(-math.Log(c))
	}
	return v
}

func (v odVec) scale(f float64) odVec {
	return odVec{v[0] * float32(f), v[1] * float32(f), v[2] * float32(f)}
}

// rotateHue turns an RGB colour around the hue circle by deg degrees,
// keeping saturation and value.
func rotateHue(rgb [3]float64, deg float64) [3]float64 {
	if deg == 0 {
		return rgb
	}
	h, s, v := rgbToHSV(rgb)
	h = math.Mod(h+deg, 360)
	if h < 0 {
		h += 360
	}
	return hsvToRGB(h, s, v)
}

func rgbToHSV(c [3]float64) (h, s, v float64) {
	r, g, b := c[0], c[1], c[2]
	mx := math.Max(r, math.Max(g, b))
	mn := math.Min(r, math.Min(g, b))
	v = mx
	d := mx - mn
	if mx > 0 {
		s = d / mx
	}
	if d == 0 {
		return 0, s, v
	}
	switch mx {
	case r:
		h = 60 * math.Mod((g-b)/d, 6)
	case g:
		h = 60 * ((b-r)/d + 2)
	default:
		h = 60 * ((r-g)/d + 4)
	}
	if h < 0 {
		h += 360
	}
	return h, s, v
}

func hsvToRGB(h, s, v float64) [3]float64 {
	c := v * s
	x := c * (1 - math.Abs(math.Mod(h/60, 2)-1))
	m := v - c
	var r, g, b float64
	switch {
	case h < 60:
		r, g, b = c, x, 0
	case h < 120:
		r, g, b = x, c, 0
	case h < 180:
		r, g, b = 0, c, x
	case h < 240:
		r, g, b = 0, x, c
	case h < 300:
		r, g, b = x, 0, c
	default:
		r, g, b = c, 0, x
	}
	return [3]float64{r + m, g + m, b + m}
}

// Hue returns the hue in degrees of an RGB colour (0..1 channels).
func Hue(r, g, b float64) float64 {
	h, _, _ := rgbToHSV([3]float64{r, g, b})
	return h
}

// canvas accumulates optical density for an image of w x h pixels.
type canvas struct {
	w, h int
	od   [3][]float32
}

func newCanvas(w, h int) *canvas {
	c := &canvas{w: w, h: h}
	for i := range c.od {
		c.od[i] = getFloats(w * h)
	}
	return c
}

// release returns the canvas's memory to the pool; c is unusable after.
func (c *canvas) release() {
	for i := range c.od {
		putFloats(c.od[i])
		c.od[i] = nil
	}
}

// Crops are rendered by the thousand; pooling their float buffers keeps
// the garbage collector (and its preemption of the render loops) out of
// the way.
var floatPool sync.Pool

// getFloats returns a zeroed slice of length n.
func getFloats(n int) []float32 {
	if p, ok := floatPool.Get().(*[]float32); ok && cap(*p) >= n {
		b := (*p)[:n]
		clear(b)
		return b
	} else if ok {
		floatPool.Put(p)
	}
	return make([]float32, n)
}

func putFloats(b []float32) {
	if cap(b) == 0 || cap(b) > 1<<20 {
		return // field-sized buffers are not worth keeping
	}
	floatPool.Put(&b)
}

func (c *canvas) deposit(i int, v *odVec, a float32) {
	c.od[0][i] += v[0] * a
	c.od[1][i] += v[1] * a
	c.od[2][i] += v[2] * a
}

// patch is a cell's coverage (0..1, anti-aliased) over its bounding box. It
// clips the structures drawn inside the cell and masks crops.
type patch struct {
	r   image.Rectangle
	cov []float32
}

func (p *patch) at(x, y int) float32 {
	if p == nil {
		return 1
	}
	if x < p.r.Min.X || y < p.r.Min.Y || x >= p.r.Max.X || y >= p.r.Max.Y {
		return 0
	}
	return p.cov[(y-p.r.Min.Y)*p.r.Dx()+(x-p.r.Min.X)]
}

// box returns the tight bounding box of the pixels at least half covered.
func (p *patch) box() image.Rectangle {
	b := image.Rectangle{Min: image.Pt(math.MaxInt32, math.MaxInt32), Max: image.Pt(math.MinInt32, math.MinInt32)}
	w := p.r.Dx()
	for i, c := range p.cov {
		if c < 0.5 {
			continue
		}
		x, y := p.r.Min.X+i%w, p.r.Min.Y+i/w
		b.Min.X = min(b.Min.X, x)
		b.Min.Y = min(b.Min.Y, y)
		b.Max.X = max(b.Max.X, x+1)
		b.Max.Y = max(b.Max.Y, y+1)
	}
	if b.Min.X > b.Max.X {
		return image.Rectangle{}
	}
	return b
}

// paint visits the pixels of box (clipped to the canvas) and deposits
// amount(x,y)*clip of stain v, where x,y are pixel centres.
func (c *canvas) paint(box image.Rectangle, clip *patch, v odVec, amount func(x, y float64) float64) {
	box = box.Intersect(image.Rect(0, 0, c.w, c.h))
	if clip != nil {
		box = box.Intersect(clip.r)
	}
	for y := box.Min.Y; y < box.Max.Y; y++ {
		fy := float64(y) + 0.5
		for x := box.Min.X; x < box.Max.X; x++ {
			a := amount(float64(x)+0.5, fy)
			if a <= 0 {
				continue
			}
			k := float32(a) * clip.at(x, y)
			if k > 0 {
				c.deposit(y*c.w+x, &v, k)
			}
		}
	}
}

func boxAround(cx, cy, r float64) image.Rectangle {
	return image.Rect(int(math.Floor(cx-r-1)), int(math.Floor(cy-r-1)), int(math.Ceil(cx+r+1)), int(math.Ceil(cy+r+1)))
}

func clamp01(v float64) float64 {
	if v < 0 {
		return 0
	}
	if v > 1 {
		return 1
	}
	return v
}

// disc is a filled anti-aliased disc.
func (c *canvas) disc(clip *patch, cx, cy, rad float64, v odVec, amt float64) {
	c.paint(boxAround(cx, cy, rad), clip, v, func(x, y float64) float64 {
		d := math.Hypot(x-cx, y-cy)
		return amt * clamp01(rad-d+0.5)
	})
}

// spot is a soft gaussian spot.
func (c *canvas) spot(clip *patch, cx, cy, sigma float64, v odVec, amt float64) {
	inv := 1 / (2 * sigma * sigma)
	c.paint(boxAround(cx, cy, 3*sigma), clip, v, func(x, y float64) float64 {
		dx, dy := x-cx, y-cy
		return amt * math.Exp(-(dx*dx+dy*dy)*inv)
	})
}

// ring is an annulus of radius rad and thickness th, drawn over the arc
// from a0 for span radians, thinning towards the arc's ends.
func (c *canvas) ring(clip *patch, cx, cy, rad, th, a0, span float64, v odVec, amt float64) {
	c.paint(boxAround(cx, cy, rad+th), clip, v, func(x, y float64) float64 {
		dx, dy := x-cx, y-cy
		d := math.Hypot(dx, dy)
		a := math.Mod(math.Atan2(dy, dx)-a0+4*math.Pi, 2*math.Pi)
		if a > span {
			return 0
		}
		// Thin the ring towards its open ends, as the cytoplasm does.
		t := a / span
		w := th * (0.55 + 0.45*math.Sin(math.Pi*t))
		if span > 2*math.Pi-0.01 {
			w = th
		}
		return amt * clamp01(w/2-math.Abs(d-rad)+0.5)
	})
}

// harmonics is a random smooth closed outline: radius(theta) =
// 1 + sum a_k cos(k theta + phi_k).
type harmonics struct {
	k  [4]int
	a  [4]float64
	ph [4]float64
}

func randHarmonics(rng *rand.Rand, kmin, kmax int, amp float64) harmonics {
	var h harmonics
	for i := range h.k {
		h.k[i] = kmin + rng.Intn(kmax-kmin+1)
		h.a[i] = amp * rng.Float64() / float64(i+1)
		h.ph[i] = rng.Float64() * 2 * math.Pi
	}
	return h
}

func (h *harmonics) at(theta float64) float64 {
	f := 1.0
	for i := range h.k {
		f += h.a[i] * math.Cos(float64(h.k[i])*theta+h.ph[i])
	}
	return f
}

// outlineTable samples a harmonics outline over the full turn so that
// per-pixel lookups cost an interpolation instead of four cosines.
type outlineTable [outlineSteps + 1]float64

const outlineSteps = 512

func (h *harmonics) table() *outlineTable {
	var t outlineTable
	for i := range t {
		t[i] = h.at(2 * math.Pi * float64(i) / outlineSteps)
	}
	return &t
}

// at takes theta in -pi..pi, as math.Atan2 returns it.
func (t *outlineTable) at(theta float64) float64 {
	f := (theta + math.Pi) * (outlineSteps / (2 * math.Pi))
	i := int(f)
	if i >= outlineSteps {
		return t[outlineSteps]
	}
	fr := f - float64(i)
	// Index shift: table starts at theta 0, lookups at -pi.
	j := (i + outlineSteps/2) % outlineSteps
	return t[j] + fr*(t[j+1]-t[j])
}

// fastAtan2 is math.Atan2 to within 1e-5 rad (a minimax polynomial on
// [0,1] plus octant folding); the cell outline lookup needs no more and it
// was the costliest call per pixel.
func fastAtan2(y, x float64) float64 {
	ax, ay := math.Abs(x), math.Abs(y)
	if ax == 0 && ay == 0 {
		return 0
	}
	a := math.Min(ax, ay) / math.Max(ax, ay)
	s := a * a
	r := ((((((-0.0040540580*s+0.0218612288)*s-0.0559098861)*s+0.0964200441)*s-0.1390853351)*s+0.1994653599)*s-0.3332985605)*s*a + a
	if ay > ax {
		r = math.Pi/2 - r
	}
	if x < 0 {
		r = math.Pi - r
	}
	if y < 0 {
		r = -r
	}
	return r
}

// fastSin is a table sine, good to 1e-4: enough for texture.
func fastSin(x float64) float64 {
	f := x * (sinSteps / (2 * math.Pi))
	f -= math.Floor(f/sinSteps) * sinSteps
	i := int(f)
	if i >= sinSteps {
		i = 0
	}
	fr := f - float64(i)
	return sinTable[i] + fr*(sinTable[i+1]-sinTable[i])
}

const sinSteps = 1024

var sinTable = func() []float64 {
	t := make([]float64, sinSteps+1)
	for i := range t {
		t[i] = math.Sin(2 * math.Pi * float64(i) / sinSteps)
	}
	return t
}()

func (h *harmonics) max() float64 {
	f := 1.0
	for _, a := range h.a {
		f += math.Abs(a)
	}
	return f
}

// blob is an irregular filled shape (amoeboid trophozoite, platelet,
// nucleus lobe) whose density rises towards its rim by rimGain.
func (c *canvas) blob(clip *patch, cx, cy, rad float64, h harmonics, rimGain float64, v odVec, amt float64) {
	c.paint(boxAround(cx, cy, rad*h.max()), clip, v, func(x, y float64) float64 {
		dx, dy := x-cx, y-cy
		d := math.Hypot(dx, dy)
		rb := rad * h.at(math.Atan2(dy, dx))
		cov := clamp01(rb - d + 0.5)
		if cov == 0 {
			return 0
		}
		return amt * cov * (1 - rimGain + rimGain*math.Min(d/rb, 1))
	})
}

// crescent is a banana shape along a circular arc of radius arcR centred at
// (ax,ay), centred on direction dir, with half-angle halfSpan and maximum
// half-width hw (falciparum gametocyte).
func (c *canvas) crescent(clip *patch, ax, ay, arcR, dir, halfSpan, hw float64, v odVec, amt float64) {
	mx, my := ax+arcR*math.Cos(dir), ay+arcR*math.Sin(dir)
	ext := arcR*math.Sin(halfSpan) + hw + 2
	c.paint(boxAround(mx, my, ext), clip, v, func(x, y float64) float64 {
		dx, dy := x-ax, y-ay
		d := math.Hypot(dx, dy)
		a := math.Atan2(dy, dx) - dir
		a = math.Mod(a+3*math.Pi, 2*math.Pi) - math.Pi
		t := a / halfSpan
		if t <= -1 || t >= 1 {
			return 0
		}
		// Blunt, rounded ends rather than needle tips.
		w := hw * math.Pow(1-t*t, 0.35)
		return amt * clamp01(w-math.Abs(d-arcR)+0.5)
	})
}

// gaussBlur blurs a plane in place with a separable gaussian of sigma
// pixels, clamping at the borders.
func gaussBlur(p []float32, w, h int, sigma float64, tmp []float32) {
	if sigma < 0.05 {
		return
	}
	rad := int(math.Ceil(3 * sigma))
	k := make([]float32, 2*rad+1)
	var sum float32
	for i := -rad; i <= rad; i++ {
		v := float32(math.Exp(-float64(i*i) / (2 * sigma * sigma)))
		k[i+rad] = v
		sum += v
	}
	for i := range k {
		k[i] /= sum
	}
	// Horizontal pass into tmp; the kernel is symmetric, so pair the taps.
	for y := 0; y < h; y++ {
		row := p[y*w : (y+1)*w]
		out := tmp[y*w : (y+1)*w]
		for x := 0; x < w; x++ {
			if x >= rad && x+rad < w {
				s := k[rad] * row[x]
				for i := 1; i <= rad; i++ {
					s += k[rad+i] * (row[x-i] + row[x+i])
				}
				out[x] = s
				continue
			}
			var s float32
			for i, kv := range k {
				xx := min(max(x+i-rad, 0), w-1)
				s += kv * row[xx]
			}
			out[x] = s
		}
	}
	// Vertical pass back into p.
	for y := 0; y < h; y++ {
		out := p[y*w : (y+1)*w]
		for x := 0; x < w; x++ {
			out[x] = 0
		}
		for i, kv := range k {
			yy := min(max(y+i-rad, 0), h-1)
			src := tmp[yy*w : (yy+1)*w]
			for x := 0; x < w; x++ {
				out[x] += kv * src[x]
			}
		}
	}
}
