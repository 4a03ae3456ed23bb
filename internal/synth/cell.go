package synth

import (
	"image"
	"math"
	"math/rand"
)

// Parasite stages and look-alikes, as recorded in CellInfo.
const (
	StageRing        = "ring"
	StageTrophozoite = "trophozoite"
	StageSchizont    = "schizont"
	StageGametocyte  = "gametocyte"

	MimicPlatelet    = "platelet"
	MimicDebris      = "debris"
	MimicHowellJolly = "howell-jolly"
)

// CellInfo says what was drawn in a cell.
type CellInfo struct {
	Label Label
	// Stage is the parasite stage of a parasitized cell ("" if uninfected).
	Stage string
	// Mimics lists the look-alikes drawn (either class may carry them).
	Mimics []string
}

// cellGeom is a red cell's outline: an ellipse of mean radius r, rotated by
// angle, with a smooth irregular boundary, and its biconcave profile.
type cellGeom struct {
	cx, cy, r  float64
	cosA, sinA float64
	ax, ay     float64 // axis stretch (ax along the rotated x axis)
	h          harmonics
	pallor     float64 // depth of the central pallor (0..1)
	pallorW    float64 // its radius, in units of r
	rim        float64 // extra density at the rim
	tex        [3][4]float64
	grain      float64
}

func newCellGeom(rng *rand.Rand, cx, cy, r float64, elong float64) cellGeom {
	a := rng.Float64() * 2 * math.Pi
	g := cellGeom{cx: cx, cy: cy, r: r, cosA: math.Cos(a), sinA: math.Sin(a)}
	e := 1 + elong
	g.ax, g.ay = math.Sqrt(e), 1/math.Sqrt(e)
	g.h = randHarmonics(rng, 2, 5, 0.06)
	if rng.Float64() < 0.05 { // crenated cell: many small bumps
		g.h.k[3] = 11 + rng.Intn(6)
		g.h.a[3] = 0.025
	}
	g.pallor = 0.3 + 0.35*rng.Float64()
	g.pallorW = 0.35 + 0.2*rng.Float64()
	g.rim = 0.1 + 0.15*rng.Float64()
	g.grain = 0.1 + 0.2*rng.Float64()
	for i := range g.tex {
		g.tex[i] = [4]float64{(rng.Float64() - 0.5) * 6 / r, (rng.Float64() - 0.5) * 6 / r, rng.Float64() * 2 * math.Pi, 0.04 * rng.Float64()}
	}
	return g
}

// extent is a radius that surely contains the cell.
func (g *cellGeom) extent() float64 { return g.r * math.Max(g.ax, g.ay) * g.h.max() }

// local maps a canvas point to the cell frame in units of r (unit circle
// before the irregularity).
func (g *cellGeom) local(x, y float64) (u, v float64) {
	dx, dy := x-g.cx, y-g.cy
	u = (dx*g.cosA + dy*g.sinA) / (g.ax * g.r)
	v = (-dx*g.sinA + dy*g.cosA) / (g.ay * g.r)
	return u, v
}

// point maps a point of the cell frame back to the canvas.
func (g *cellGeom) point(u, v float64) (x, y float64) {
	u *= g.ax * g.r
	v *= g.ay * g.r
	return g.cx + u*g.cosA - v*g.sinA, g.cy + u*g.sinA + v*g.cosA
}

// randInside returns a canvas point at normalised radius in [rmin, rmax].
func (g *cellGeom) randInside(rng *rand.Rand, rmin, rmax float64) (x, y float64) {
	rho := rmin + (rmax-rmin)*math.Sqrt(rng.Float64())
	t := rng.Float64() * 2 * math.Pi
	f := g.h.at(t)
	return g.point(rho*f*math.Cos(t), rho*f*math.Sin(t))
}

// draw deposits the cell's haemoglobin/eosin and returns its coverage.
func (g *cellGeom) draw(c *canvas, od odVec, rng *rand.Rand) *patch {
	box := boxAround(g.cx, g.cy, g.extent()+1).Intersect(image.Rect(0, 0, c.w, c.h))
	p := &patch{r: box, cov: getFloats(box.Dx() * box.Dy())}
	edgePx := g.r * math.Min(g.ax, g.ay)
	outline := g.h.table()
	reach := g.h.max() + 1/edgePx
	for y := box.Min.Y; y < box.Max.Y; y++ {
		for x := box.Min.X; x < box.Max.X; x++ {
			px, py := float64(x)+0.5, float64(y)+0.5
			u, v := g.local(px, py)
			rho0 := math.Sqrt(u*u + v*v)
			if rho0 > reach {
				continue
			}
			rho := rho0 / outline.at(fastAtan2(v, u))
			cov := clamp01((1-rho)*edgePx + 0.5)
			if cov == 0 {
				continue
			}
			p.cov[(y-box.Min.Y)*box.Dx()+(x-box.Min.X)] = float32(cov)
			q := rho / g.pallorW
			t := 1 - g.pallor*float64(expNeg(float32(q*q)))
			d := (rho - 0.82) / 0.12
			t *= 1 + g.rim*float64(expNeg(float32(d*d)))
			for _, tx := range g.tex {
				t *= 1 + tx[3]*fastSin(px*tx[0]+py*tx[1]+tx[2])
			}
			// Fine grain of the film; the optics blur correlates it.
			t *= 1 + g.grain*(rng.Float64()-0.5)
			c.deposit(y*c.w+x, &od, float32(t*cov))
		}
	}
	return p
}

// cellRenderer draws one red cell (with its parasite or look-alikes) into a
// canvas: shared by crops and fields so both look alike.
type cellRenderer struct {
	s   *Slide
	c   *canvas
	rng *rand.Rand
}

// draw renders a red cell centred at (cx,cy) of mean radius r, with a
// parasite of a random stage when label is Parasitized and look-alikes at
// the same rates in both classes.
func (cr *cellRenderer) draw(cx, cy, r float64, label Label) (cellGeom, *patch, CellInfo) {
	rng := cr.rng
	info := CellInfo{Label: label}
	if label == Parasitized {
		info.Stage = pickStage(rng)
	}
	elong := 0.0
	switch {
	case info.Stage == StageGametocyte:
		elong = 0.5 + 0.3*rng.Float64()
	case rng.Float64() < 0.1: // ovalocytes and smear-drag, in both classes
		elong = 0.15 + 0.3*rng.Float64()
	default:
		elong = 0.06 * rng.Float64()
	}
	g := newCellGeom(rng, cx, cy, r, elong)
	if info.Stage == StageGametocyte {
		g.pallor *= 0.3
	}
	clip := g.draw(cr.c, cr.s.pal.rbc, rng)

	// Look-alikes first, then the parasite on top; the same rates in both
	// classes so that their presence says nothing about the label.
	if rng.Float64() < 0.2 {
		cr.platelet(&g, clip)
		info.Mimics = append(info.Mimics, MimicPlatelet)
	}
	if rng.Float64() < 0.15 {
		cr.debris(&g, clip)
		info.Mimics = append(info.Mimics, MimicDebris)
	}
	if rng.Float64() < 0.1 {
		cr.howellJolly(&g, clip)
		info.Mimics = append(info.Mimics, MimicHowellJolly)
	}
	switch info.Stage {
	case StageRing:
		n := 1
		if rng.Float64() < 0.15 {
			n = 2 + rng.Intn(2)
		}
		for range n {
			cr.ring(&g, clip)
		}
	case StageTrophozoite:
		cr.trophozoite(&g, clip)
	case StageSchizont:
		cr.schizont(&g, clip)
	case StageGametocyte:
		cr.gametocyte(&g, clip)
	}
	return g, clip, info
}

func pickStage(rng *rand.Rand) string {
	switch u := rng.Float64(); {
	case u < 0.5:
		return StageRing
	case u < 0.75:
		return StageTrophozoite
	case u < 0.88:
		return StageSchizont
	default:
		return StageGametocyte
	}
}

// px converts a size in units of the cell radius into pixels, never below
// lo pixels so that small fields keep visible structure.
func px(g *cellGeom, rel, lo float64) float64 { return math.Max(rel*g.r, lo) }

func (cr *cellRenderer) ring(g *cellGeom, clip *patch) {
	rng, pal := cr.rng, &cr.s.pal
	rad := px(g, 0.13+0.08*rng.Float64(), 3.5)
	th := px(g, 0.04+0.02*rng.Float64(), 1.4)
	var x, y float64
	if rng.Float64() < 0.15 { // accolé form at the cell margin
		x, y = g.randInside(rng, 0.78, 0.85)
	} else {
		x, y = g.randInside(rng, 0, 0.6)
	}
	a0 := rng.Float64() * 2 * math.Pi
	span := 2*math.Pi - rng.Float64()*1.4
	cr.c.ring(clip, x, y, rad, th, a0, span, pal.cyto, 1.0+0.4*rng.Float64())
	// Chromatin dot(s) on the ring; a second dot gives the headphone form.
	dots := 1
	if rng.Float64() < 0.25 {
		dots = 2
	}
	for d := range dots {
		a := a0 + span*(0.5+0.35*float64(d)*(1-2*rng.Float64()))
		if d == 0 {
			a = a0 + span*(0.2+0.6*rng.Float64())
		}
		cr.c.disc(clip, x+rad*math.Cos(a), y+rad*math.Sin(a), px(g, 0.055+0.025*rng.Float64(), 1.6), pal.chrom, 1.0+0.3*rng.Float64())
	}
}

func (cr *cellRenderer) trophozoite(g *cellGeom, clip *patch) {
	rng, pal := cr.rng, &cr.s.pal
	rad := px(g, 0.22+0.14*rng.Float64(), 5)
	x, y := g.randInside(rng, 0, 0.45)
	h := randHarmonics(rng, 2, 5, 0.45)
	cr.c.blob(clip, x, y, rad, h, 0.35, pal.cyto, 0.9+0.4*rng.Float64())
	// A vacuole: a paler hole in the cytoplasm.
	if rng.Float64() < 0.6 {
		cr.c.spot(clip, x+rad*0.2*(rng.Float64()-0.5), y+rad*0.2*(rng.Float64()-0.5), rad*0.3, pal.cyto, -0.35)
	}
	a := rng.Float64() * 2 * math.Pi
	cr.c.disc(clip, x+0.5*rad*math.Cos(a), y+0.5*rad*math.Sin(a), px(g, 0.07, 1.8), pal.chrom, 1.1)
	for range 3 + rng.Intn(6) { // haemozoin granules
		gx, gy := x+rad*0.7*(rng.Float64()*2-1), y+rad*0.7*(rng.Float64()*2-1)
		cr.c.disc(clip, gx, gy, px(g, 0.025, 0.8), pal.pigment, 0.9)
	}
}

func (cr *cellRenderer) schizont(g *cellGeom, clip *patch) {
	rng, pal := cr.rng, &cr.s.pal
	area := px(g, 0.32+0.14*rng.Float64(), 7)
	x, y := g.randInside(rng, 0, 0.3)
	cr.c.blob(clip, x, y, area, randHarmonics(rng, 2, 4, 0.15), 0, pal.cyto, 0.45)
	n := 8 + rng.Intn(17)
	md := px(g, 0.05+0.015*rng.Float64(), 1.5)
	for i := range n {
		// Sunflower layout with jitter: merozoites fill the schizont evenly.
		rr := area * 0.85 * math.Sqrt((float64(i)+0.5)/float64(n))
		a := float64(i)*2.39996 + rng.NormFloat64()*0.2
		cr.c.disc(clip, x+rr*math.Cos(a), y+rr*math.Sin(a), md, pal.chrom, 1.0+0.3*rng.Float64())
	}
	cr.c.disc(clip, x+rng.NormFloat64()*area*0.15, y+rng.NormFloat64()*area*0.15, px(g, 0.08, 2), pal.pigment, 1.2)
}

func (cr *cellRenderer) gametocyte(g *cellGeom, clip *patch) {
	rng, pal := cr.rng, &cr.s.pal
	// The crescent lies along the cell's long axis, bowing to one side.
	dir := math.Atan2(g.sinA, g.cosA) + math.Pi/2
	if rng.Float64() < 0.5 {
		dir += math.Pi
	}
	arcR := g.r * g.ax * (1.4 + 1.2*rng.Float64())
	halfLen := 0.85 * g.r * g.ax
	halfSpan := math.Asin(math.Min(halfLen/arcR, 0.95))
	hw := px(g, 0.2+0.08*rng.Float64(), 4)
	// Arc centre on the far side so that the arc passes near the cell centre.
	sag := arcR * (1 - math.Cos(halfSpan)) / 2
	ax := g.cx - (arcR-sag)*math.Cos(dir)
	ay := g.cy - (arcR-sag)*math.Sin(dir)
	cr.c.crescent(clip, ax, ay, arcR, dir, halfSpan, hw, pal.cyto, 0.8+0.25*rng.Float64())
	mx, my := ax+arcR*math.Cos(dir), ay+arcR*math.Sin(dir)
	cr.c.spot(clip, mx, my, hw*0.6, pal.chrom, 0.6)
	for range 6 + rng.Intn(10) {
		t := (rng.Float64()*2 - 1) * halfSpan * 0.5
		rr := arcR + (rng.Float64()*2-1)*hw*0.5
		cr.c.disc(clip, ax+rr*math.Cos(dir+t), ay+rr*math.Sin(dir+t), px(g, 0.022, 0.8), pal.pigment, 1.0)
	}
}

// platelet: a small, pale, granular lilac blob lying over the cell, most
// often near its edge.
func (cr *cellRenderer) platelet(g *cellGeom, clip *patch) {
	rng, pal := cr.rng, &cr.s.pal
	var x, y float64
	if rng.Float64() < 0.7 {
		x, y = g.randInside(rng, 0.7, 0.95)
	} else {
		x, y = g.randInside(rng, 0, 0.7)
	}
	rad := px(g, 0.07+0.05*rng.Float64(), 2.5)
	cr.c.blob(clip, x, y, rad, randHarmonics(rng, 2, 4, 0.25), 0, pal.platelet, 0.8+0.3*rng.Float64())
	for range 2 + rng.Intn(4) {
		cr.c.disc(clip, x+(rng.Float64()*2-1)*rad*0.6, y+(rng.Float64()*2-1)*rad*0.6, px(g, 0.015, 0.6), pal.granule, 0.9)
	}
}

// debris: stain precipitate, a sprinkle of tiny dark specks.
func (cr *cellRenderer) debris(g *cellGeom, clip *patch) {
	rng, pal := cr.rng, &cr.s.pal
	n := 3 + rng.Intn(12)
	cx, cy := g.randInside(rng, 0, 0.8)
	spread := g.r * (0.2 + 0.5*rng.Float64())
	for range n {
		x, y := cx+rng.NormFloat64()*spread, cy+rng.NormFloat64()*spread
		cr.c.disc(clip, x, y, px(g, 0.01+0.015*rng.Float64(), 0.5), pal.debris, 0.8+0.6*rng.Float64())
	}
}

// howellJolly: one small, perfectly round, dense dot with no cytoplasm.
func (cr *cellRenderer) howellJolly(g *cellGeom, clip *patch) {
	rng, pal := cr.rng, &cr.s.pal
	x, y := g.randInside(rng, 0.25, 0.8)
	cr.c.disc(clip, x, y, px(g, 0.035+0.015*rng.Float64(), 1.2), pal.hj, 1.2+0.4*rng.Float64())
}

// RenderCell draws one cell crop of the given label: a red cell on black,
// as in the NIH set. The image is the lossless render (no JPEG artefacts);
// Cell adds those when the knobs ask for JPEG.
func (s *Slide) RenderCell(rng *rand.Rand, label Label) (*image.RGBA, CellInfo) {
	r := s.CropRadius * (1 + 0.12*(2*rng.Float64()-1))
	// Gametocytes elongate the cell; leave room for that.
	size := int(math.Ceil(2*r*1.6)) + 8
	c := newCanvas(size, size)
	jx, jy := (rng.Float64()-0.5)*4, (rng.Float64()-0.5)*4
	cr := cellRenderer{s: s, c: c, rng: rng}
	_, clip, info := cr.draw(float64(size)/2+jx, float64(size)/2+jy, r, label)
	// Develop only the square around the cell: that is what the segmenter
	// would crop, and it halves the work.
	sq := squareAround(clip.box(), 4)
	sub, subClip := c.sub(sq, clip)
	c.release()
	img := s.develop(sub, rng, subClip)
	sub.release()
	putFloats(clip.cov)
	return img, info
}

// squareAround is the square of side max(w,h)+2*border centred on b.
func squareAround(b image.Rectangle, border int) image.Rectangle {
	side := max(b.Dx(), b.Dy()) + 2*border
	cx, cy := (b.Min.X+b.Max.X)/2, (b.Min.Y+b.Max.Y)/2
	return image.Rect(cx-side/2, cy-side/2, cx-side/2+side, cy-side/2+side)
}

// sub copies the part r of the canvas (zero outside it) into a new canvas
// with its origin at r.Min, and moves clip along.
func (c *canvas) sub(r image.Rectangle, clip *patch) (*canvas, *patch) {
	out := newCanvas(r.Dx(), r.Dy())
	src := r.Intersect(image.Rect(0, 0, c.w, c.h))
	for ch := range c.od {
		for y := src.Min.Y; y < src.Max.Y; y++ {
			copy(out.od[ch][(y-r.Min.Y)*out.w+(src.Min.X-r.Min.X):], c.od[ch][y*c.w+src.Min.X:y*c.w+src.Max.X])
		}
	}
	p := &patch{r: clip.r.Sub(r.Min), cov: clip.cov}
	return out, p
}

// Cell draws one cell crop; with Knobs.JPEGQuality set it carries the JPEG
// artefacts of that quality.
func (s *Slide) Cell(rng *rand.Rand, label Label) image.Image {
	img, _ := s.RenderCell(rng, label)
	return s.finish(img)
}
