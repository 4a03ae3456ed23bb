package inference

import (
	"fmt"
	"math"
	"sync"

	"gocv.io/x/gocv"
)

// Preprocessor turns a decoded 8-bit BGR image into the network's input
// tensor exactly as the manifest's input spec says: resize to width x height,
// channel order, value = (pixel*scale - mean[c]) / std[c], NCHW or NHWC.
//
// The resize is the training recipe's (models/recipe/common.py,
// resize_like_opencv): bilinear with half-pixel centres and no antialiasing,
// as torch's F.interpolate(align_corners=False) computes it in float32 on a
// channels-last tensor, rounded half to even back to 8 bits. OpenCV's
// INTER_LINEAR is the same filter but with 11-bit fixed-point weights, which
// moves some pixels by one level; computing it here keeps the network's input
// identical to what it was trained on.
//
// A Preprocessor is safe for concurrent use and allocates nothing per image
// once it has seen an input size (interpolation tables are cached per size).
type Preprocessor struct {
	spec InputSpec
	// lut[c][v] is the normalised value of 8-bit sample v in output
	// channel c; it replaces a multiply, subtract and divide per sample.
	lut [3][256]float32
	// src[c] is the BGR index feeding output channel c.
	src [3]int
	// grey[c] and greyOff turn normalised values back into a grey level
	// (0..255, ITU-R 601 luma) for Focus.
	grey    [3]float32
	greyOff float32

	mu        sync.RWMutex
	tables    map[[2]int]*linearTable
	scratch   sync.Pool // *fixedScratch
	focusPool sync.Pool // *focusScratch
}

// NewPreprocessor validates spec and precomputes its tables.
func NewPreprocessor(spec InputSpec) (*Preprocessor, error) {
	if spec.Width <= 0 || spec.Height <= 0 {
		return nil, fmt.Errorf("input.width/height must be positive, got %dx%d", spec.Width, spec.Height)
	}
	if spec.Layout != "NCHW" && spec.Layout != "NHWC" {
		return nil, fmt.Errorf("input.layout must be NCHW or NHWC, got %q", spec.Layout)
	}
	if !(spec.Scale > 0) || math.IsInf(spec.Scale, 0) {
		return nil, fmt.Errorf("input.scale must be a positive number, got %v", spec.Scale)
	}
	p := &Preprocessor{spec: spec, tables: map[[2]int]*linearTable{}}
	switch spec.Color {
	case "RGB":
		p.src = [3]int{2, 1, 0}
	case "BGR":
		p.src = [3]int{0, 1, 2}
	default:
		return nil, fmt.Errorf("input.color must be RGB or BGR, got %q", spec.Color)
	}
	for c := range 3 {
		if !(spec.Std[c] > 0) || math.IsInf(spec.Std[c], 0) || math.IsNaN(spec.Mean[c]) || math.IsInf(spec.Mean[c], 0) {
			return nil, fmt.Errorf("input.mean[%d]/std[%d] must be finite with std > 0, got %v/%v", c, c, spec.Mean[c], spec.Std[c])
		}
		// float32 arithmetic in the recipe's order (x*scale, minus mean,
		// divided by std) so values match the training tensors bit for bit.
		scale, mean, std := float32(spec.Scale), float32(spec.Mean[c]), float32(spec.Std[c])
		for v := range 256 {
			p.lut[c][v] = (float32(v)*scale - mean) / std
		}
		// pixel = (value*std + mean) / scale
		w := luma[p.src[c]]
		p.grey[c] = float32(w * spec.Std[c] / spec.Scale)
		p.greyOff += float32(w * spec.Mean[c] / spec.Scale)
	}
	return p, nil
}

// Size is the number of float32 values one image becomes.
func (p *Preprocessor) Size() int { return 3 * p.spec.Width * p.spec.Height }

// Mat preprocesses m (8-bit, 3-channel BGR, as Decoder.Decode returns) into
// dst, which must have length Size().
func (p *Preprocessor) Mat(dst []float32, m gocv.Mat) error {
	if m.Empty() {
		return fmt.Errorf("preprocess: empty image")
	}
	if m.Type() != gocv.MatTypeCV8UC3 {
		return fmt.Errorf("preprocess: want an 8-bit 3-channel image, got Mat type %d", int(m.Type()))
	}
	if !m.IsContinuous() {
		c := m.Clone()
		defer c.Close()
		m = c
	}
	pix, err := m.DataPtrUint8()
	if err != nil {
		return fmt.Errorf("preprocess: %w", err)
	}
	return p.BGR(dst, pix, m.Cols(), m.Rows())
}

// BGR preprocesses packed 8-bit BGR pixels (w*h*3 bytes, rows top to
// bottom) into dst.
func (p *Preprocessor) BGR(dst []float32, pix []byte, w, h int) error {
	if w <= 0 || h <= 0 || len(pix) < w*h*3 {
		return fmt.Errorf("preprocess: %d bytes do not hold a %dx%d BGR image", len(pix), w, h)
	}
	if len(dst) != p.Size() {
		return fmt.Errorf("preprocess: destination has %d values, want %d", len(dst), p.Size())
	}
	ow, oh := p.spec.Width, p.spec.Height
	xt := p.table(w, ow)
	yt := p.table(h, oh)
	if xt.exact && yt.exact {
		p.resizeFixed(dst, pix, w, xt, yt)
	} else {
		p.resizeFloat(dst, pix, w, xt, yt)
	}
	return nil
}

// store writes one output pixel's three 8-bit samples (BGR) normalised into
// dst at pixel index i.
func (p *Preprocessor) store(dst []float32, i, plane int, nchw bool, px *[3]uint8) {
	v0, v1, v2 := p.lut[0][px[p.src[0]]], p.lut[1][px[p.src[1]]], p.lut[2][px[p.src[2]]]
	if nchw {
		dst[i], dst[plane+i], dst[2*plane+i] = v0, v1, v2
	} else {
		dst[3*i], dst[3*i+1], dst[3*i+2] = v0, v1, v2
	}
}

// resizeFixed is the integer form of resizeFloat for the common case where
// every weight is a multiple of 1/256 (any input size resized to a power of
// two such as 128): then torch's float32 sums are exact, and so is this
// fixed-point sum, including the round-half-to-even. It is separable: each
// source row is interpolated horizontally once (in 1/256 units, exact in
// int32) and output rows blend two such rows, which halves the arithmetic
// of the direct four-tap form.
func (p *Preprocessor) resizeFixed(dst []float32, pix []byte, w int, xt, yt *linearTable) {
	ow, oh := len(xt.i0), len(yt.i0)
	n := 3 * ow
	sc, _ := p.scratch.Get().(*fixedScratch)
	if sc == nil || len(sc.a) < n {
		sc = &fixedScratch{a: make([]int32, n), b: make([]int32, n), row: make([]uint8, n)}
	}
	defer p.scratch.Put(sc)
	rowA, rowB, row := sc.a[:n], sc.b[:n], sc.row[:n]
	idxA, idxB := -1, -1
	xi0, xi1, xq0, xq1 := xt.i0[:ow], xt.i1[:ow], xt.q0[:ow], xt.q1[:ow]
	horizontal := func(dst []int32, y int) {
		src := pix[y*w*3 : (y+1)*w*3]
		dst = dst[:3*len(xi0)]
		for x := range xi0 {
			a := src[3*xi0[x] : 3*xi0[x]+3 : 3*xi0[x]+3]
			b := src[3*xi1[x] : 3*xi1[x]+3 : 3*xi1[x]+3]
			w0, w1 := xq0[x], xq1[x]
			d := dst[3*x : 3*x+3 : 3*x+3]
			d[0] = int32(a[0])*w0 + int32(b[0])*w1
			d[1] = int32(a[1])*w0 + int32(b[1])*w1
			d[2] = int32(a[2])*w0 + int32(b[2])*w1
		}
	}
	plane := ow * oh
	nchw := p.spec.Layout == "NCHW"
	s0, s1, s2 := p.src[0], p.src[1], p.src[2]
	l0, l1, l2 := &p.lut[0], &p.lut[1], &p.lut[2]
	for y := range oh {
		i0, i1 := yt.i0[y], yt.i1[y]
		// Rows advance monotonically; keep the two most recent.
		if idxB == i0 {
			rowA, rowB, idxA, idxB = rowB, rowA, idxB, idxA
		}
		if idxA != i0 {
			horizontal(rowA, i0)
			idxA = i0
		}
		if idxB != i1 {
			horizontal(rowB, i1)
			idxB = i1
		}
		h0, h1 := yt.q0[y], yt.q1[y]
		if !nchw {
			for k := range row {
				row[k] = round16(h0*rowA[k] + h1*rowB[k])
			}
			d := dst[y*n : (y+1)*n]
			for x := 0; x+2 < len(d); x += 3 {
				d[x], d[x+1], d[x+2] = l0[row[x+s0]], l1[row[x+s1]], l2[row[x+s2]]
			}
			continue
		}
		d0 := dst[y*ow : (y+1)*ow]
		d1 := dst[plane+y*ow : plane+(y+1)*ow]
		d2 := dst[2*plane+y*ow : 2*plane+(y+1)*ow]
		d1 = d1[:len(d0)]
		d2 = d2[:len(d0)]
		ra, rb := rowA[:3*len(d0)], rowB[:3*len(d0)]
		if s0 == 2 { // RGB, the usual order: output channel 0 is BGR sample 2
			for x := range d0 {
				k := 3 * x
				a, b := ra[k:k+3:k+3], rb[k:k+3:k+3]
				d0[x] = l0[round16(h0*a[2]+h1*b[2])]
				d1[x] = l1[round16(h0*a[1]+h1*b[1])]
				d2[x] = l2[round16(h0*a[0]+h1*b[0])]
			}
			continue
		}
		for x := range d0 {
			k := 3 * x
			a, b := ra[k:k+3:k+3], rb[k:k+3:k+3]
			px := [3]uint8{round16(h0*a[0] + h1*b[0]), round16(h0*a[1] + h1*b[1]), round16(h0*a[2] + h1*b[2])}
			d0[x], d1[x], d2[x] = l0[px[s0]], l1[px[s1]], l2[px[s2]]
		}
	}
}

// round16 turns a 16.16 fixed-point sample into 8 bits, rounding half to
// even like torch.round. The weights sum to 1<<16, so s>>16 <= 255; adding
// 0x7FFF plus the integer part's parity rounds half to even.
func round16(s int32) uint8 {
	return uint8((s + 0x7FFF + (s>>16)&1) >> 16)
}

type fixedScratch struct {
	a, b []int32
	row  []uint8
}

// resizeFloat follows torch's channels-last bilinear kernel operation by
// operation in float32.
func (p *Preprocessor) resizeFloat(dst []float32, pix []byte, w int, xt, yt *linearTable) {
	ow, oh := len(xt.i0), len(yt.i0)
	plane := ow * oh
	nchw := p.spec.Layout == "NCHW"
	var px [3]uint8
	for y := range oh {
		r0 := pix[yt.i0[y]*w*3 : (yt.i0[y]+1)*w*3]
		r1 := pix[yt.i1[y]*w*3 : (yt.i1[y]+1)*w*3]
		h0, h1 := yt.l0[y], yt.l1[y]
		for x := range ow {
			a, b := xt.i0[x]*3, xt.i1[x]*3
			w00, w01 := h0*xt.l0[x], h0*xt.l1[x]
			w10, w11 := h1*xt.l0[x], h1*xt.l1[x]
			for c := range 3 {
				// float32() on each product forbids fused multiply-adds
				// (arm64), keeping torch's rounding of every step.
				v := float32(float32(r0[a+c])*w00) + float32(float32(r0[b+c])*w01) + float32(float32(r1[a+c])*w10) + float32(float32(r1[b+c])*w11)
				px[c] = round8(v)
			}
			p.store(dst, y*ow+x, plane, nchw, &px)
		}
	}
}

// round8 rounds half to even (torch.round) and saturates to 0..255.
func round8(v float32) uint8 {
	r := math.RoundToEven(float64(v))
	if r <= 0 {
		return 0
	}
	if r >= 255 {
		return 255
	}
	return uint8(r)
}

// linearTable holds, for each output index along one axis, the two input
// indices and their weights.
type linearTable struct {
	i0, i1 []int
	l0, l1 []float32
	// q0, q1 are the weights in units of 1/256, valid when exact.
	q0, q1 []int32
	exact  bool
}

func (p *Preprocessor) table(in, out int) *linearTable {
	key := [2]int{in, out}
	p.mu.RLock()
	t := p.tables[key]
	p.mu.RUnlock()
	if t != nil {
		return t
	}
	t = linearIndices(in, out)
	p.mu.Lock()
	// Input sizes vary per crop; bound the cache so a stream of odd sizes
	// cannot grow it without limit.
	if len(p.tables) > 1024 {
		clear(p.tables)
	}
	p.tables[key] = t
	p.mu.Unlock()
	return t
}

// linearIndices ports compute_source_index_and_lambda of torch's CPU
// upsample kernel (align_corners=False, float32 arithmetic).
func linearIndices(in, out int) *linearTable {
	t := &linearTable{i0: make([]int, out), i1: make([]int, out), l0: make([]float32, out), l1: make([]float32, out),
		q0: make([]int32, out), q1: make([]int32, out), exact: true}
	scale := float32(in) / float32(out)
	for o := range out {
		if in == out {
			t.i0[o], t.i1[o], t.l0[o], t.l1[o] = o, o, 1, 0
			continue
		}
		src := scale*(float32(o)+0.5) - 0.5
		if src < 0 {
			src = 0
		}
		i0 := int(src)
		i1 := i0
		if i0 < in-1 {
			i1++
		}
		l1 := min(max(src-float32(i0), 0), 1)
		t.i0[o], t.i1[o], t.l0[o], t.l1[o] = i0, i1, 1-l1, l1
	}
	for o := range out {
		q := t.l1[o] * 256
		if q != float32(int32(q)) {
			t.exact = false
			break
		}
		t.q0[o], t.q1[o] = 256-int32(q), int32(q)
	}
	return t
}

// ITU-R BT.601 luma weights by BGR index.
var luma = [3]float64{0.114, 0.587, 0.299}

// Focus measure constants. Crops are cells on black (the NIH convention,
// and what Segmentation.Crop produces): pixels at or below focusBlack grey
// levels are background, and focusErode erosions keep the measure off the
// cell's outline, whose step to black is sharp however blurred the optics
// are (the mask is applied after the blur) and would otherwise dominate it.
const (
	focusBlack    = 4
	focusErode    = 3
	focusMinCount = 16
)

type focusScratch struct {
	grey []float32
	mask []uint8
}

// Focus measures the sharpness of one preprocessed image (in, as Mat or BGR
// filled it): the variance of the 4-neighbour Laplacian of the grey image
// (luma, 0..255) at the model's input size, over the cell's interior. It
// falls as defocus grows and is unchanged by adding a constant brightness;
// it also follows contrast and sensor noise, which is why drift detection
// compares its distribution with a reference rather than thresholding it.
// An image with fewer than 16 interior pixels (blank, or all background)
// has focus 0. Cost: a few passes over width x height values, no
// allocation once warm.
func (p *Preprocessor) Focus(in []float32) float64 {
	w, h := p.spec.Width, p.spec.Height
	n := w * h
	if len(in) != 3*n || w < 3 || h < 3 {
		return 0
	}
	sc, _ := p.focusPool.Get().(*focusScratch)
	if sc == nil || len(sc.grey) < n {
		sc = &focusScratch{grey: make([]float32, n), mask: make([]uint8, n+w)}
	}
	defer p.focusPool.Put(sc)
	grey, mask, zero := sc.grey[:n], sc.mask[:n], sc.mask[n:n+w]
	g0, g1, g2, off := p.grey[0], p.grey[1], p.grey[2], p.greyOff
	nchw := p.spec.Layout == "NCHW"
	// mask[i] is pixel i's city-block distance to the background or the
	// image border, capped at focusErode+1: a pixel survives k erosions by
	// the 4-neighbour cross exactly when its distance exceeds k. A forward
	// raster pass (fused with the grey conversion) and a backward one
	// (fused with the Laplacian, which needs a row's final distances only)
	// compute it. zero stands for the rows beyond the border.
	const cap8 = focusErode + 1
	up := zero
	for y := range h {
		g := grey[y*w : (y+1)*w]
		if nchw {
			c0, c1, c2 := in[y*w:(y+1)*w], in[n+y*w:n+(y+1)*w], in[2*n+y*w:2*n+(y+1)*w]
			c1, c2 = c1[:len(c0)], c2[:len(c0)]
			g = g[:len(c0)]
			for x := range c0 {
				g[x] = g0*c0[x] + g1*c1[x] + g2*c2[x] + off
			}
		} else {
			px := in[3*y*w : 3*(y+1)*w]
			for x := range g {
				g[x] = g0*px[3*x] + g1*px[3*x+1] + g2*px[3*x+2] + off
			}
		}
		row := mask[y*w : (y+1)*w]
		up = up[:len(row)]
		g = g[:len(row)]
		var left uint8
		for x := range row {
			d := min(up[x], left) + 1
			if d > cap8 {
				d = cap8
			}
			if !(g[x] > focusBlack) {
				d = 0
			}
			row[x] = d
			left = d
		}
		up = row
	}
	// The Laplacian's mean over a cell is near 0 and its square large, so
	// E[l^2] - E[l]^2 loses nothing to cancellation; float32 sums per row
	// (at most w terms) are exact enough and spare conversions.
	var cnt int
	var s, s2 float64
	down := zero
	for y := h - 1; y >= 0; y-- {
		row := mask[y*w : (y+1)*w]
		down = down[:len(row)]
		var right uint8
		for x := len(row) - 1; x >= 0; x-- {
			d := row[x]
			if e := min(down[x], right) + 1; e < d {
				d = e
			}
			row[x] = d
			right = d
		}
		down = row
		if y == 0 || y == h-1 {
			continue
		}
		gu, g, gd := grey[(y-1)*w:y*w], grey[y*w:(y+1)*w], grey[(y+1)*w:(y+2)*w]
		gu, gd, row = gu[:len(g)], gd[:len(g)], row[:len(g)]
		var rs, rs2 float32
		var rc int
		for x := 1; x < len(g)-1; x++ {
			if row[x] < cap8 {
				continue
			}
			l := g[x-1] + g[x+1] + gu[x] + gd[x] - 4*g[x]
			rs += l
			rs2 += l * l
			rc++
		}
		s += float64(rs)
		s2 += float64(rs2)
		cnt += rc
	}
	if cnt < focusMinCount {
		return 0
	}
	m := s / float64(cnt)
	return max(s2/float64(cnt)-m*m, 0)
}
