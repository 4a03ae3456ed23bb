package inference

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"
	"slices"
	"sort"
	"unsafe"

	"gocv.io/x/gocv"
)

// Field segmentation: a Giemsa thin-smear field (bright background, pink red
// cells, dark purple white-cell nuclei) is cut into one crop per red cell.
//
//  1. Foreground: the green channel (haemoglobin/eosin and Giemsa all absorb
//     green) against a local background estimate, so that vignetting and
//     lamp drift do not move the threshold; holes (central pallor) filled.
//  2. Clumps of touching or overlapping cells are split at the distance
//     transform: one marker per peak (peaks joined by a ridge with no saddle
//     are one cell), then the clump's pixels go to the marker with the
//     smallest power distance |p-c|^2 - r^2. For two overlapping discs that
//     boundary is exactly the chord through their intersections, which a
//     plain watershed on the distance transform only approximates.
//  3. Size filters against the field's median cell: platelets, debris and
//     unresolved clumps go; white cells are recognised by their nucleus (a
//     large share of very dark pixels) and reported apart.

// ErrNotField is returned for inputs that cannot be a field (empty, wrong
// pixel type, too small).
var ErrNotField = errors.New("not a field image")

// ErrImplausibleField is returned by AnalyzeField for a field whose
// segmented objects are not red cells at the model's scale (noise, text,
// a photograph segment into thousands of specks): refused before any of
// them is classified, which also bounds the work and memory one file can
// cost.
var ErrImplausibleField = errors.New("implausible field")

// SegmentOptions tune SegmentField; the zero value means the defaults.
type SegmentOptions struct {
	// Foreground is the share of the local background brightness (green
	// channel) below which a pixel belongs to a cell. Default 0.9: the
	// palest central pallor of a red cell stays below it, sensor noise on
	// the empty slide stays above.
	Foreground float64
	// MinArea and MaxArea bound a red cell's area relative to the field's
	// median cell area. Defaults 0.3 (platelets, debris, cut-off slivers
	// are smaller) and 2.5 (larger is an unresolved clump).
	MinArea, MaxArea float64
	// Nucleus is the share of the local background brightness below which a
	// pixel counts as white-cell nucleus. Default 0.2.
	Nucleus float64
	// KeepBorder keeps cells cut by the image border; by default they are
	// dropped, as a partial cell cannot be classified reliably.
	KeepBorder bool
	// CropBorder is the margin in pixels around a cell in Crop. Default 4.
	CropBorder int
	// MinCellSide is the smallest median cell side (the shorter side of
	// the cells' boxes, in pixels) of a plausible field. Default 16: red
	// cells of the synthetic fields are 44-58 px across at nominal
	// magnification and stay above it down to 0.35x; sensor noise segments
	// into specks of a few pixels.
	MinCellSide int
}

func (o SegmentOptions) withDefaults() SegmentOptions {
	if o.Foreground <= 0 || o.Foreground >= 1 {
		o.Foreground = 0.9
	}
	if o.MinArea <= 0 {
		o.MinArea = 0.3
	}
	if o.MaxArea <= 0 {
		o.MaxArea = 2.5
	}
	if o.Nucleus <= 0 || o.Nucleus >= 1 {
		o.Nucleus = 0.2
	}
	if o.CropBorder <= 0 {
		o.CropBorder = 4
	}
	if o.MinCellSide <= 0 {
		o.MinCellSide = 16
	}
	return o
}

// plausible checks that the segmented cells are red cells at the model's
// scale: their median side is at least MinCellSide.
func (s *Segmentation) plausible(opts SegmentOptions) error {
	opts = opts.withDefaults()
	if len(s.Cells) == 0 {
		return nil
	}
	sides := make([]int, len(s.Cells))
	for i, c := range s.Cells {
		sides[i] = min(c.Box.Dx(), c.Box.Dy())
	}
	slices.Sort(sides)
	if med := sides[len(sides)/2]; med < opts.MinCellSide {
		return fmt.Errorf("%w: %d objects with a median side of %d px; red cells at the model's scale are at least %d px across", ErrImplausibleField, len(s.Cells), med, opts.MinCellSide)
	}
	return nil
}

// SegmentedCell is one red cell found in a field.
type SegmentedCell struct {
	// Box is the cell's bounding box in field pixels. For a cell split from
	// a clump it includes the part hidden under its neighbour.
	Box image.Rectangle
	// Center is the distance-transform peak; Radius the inscribed radius
	// there, in pixels.
	Center image.Point
	Radius float64
	// Area is the number of pixels assigned to the cell.
	Area int
	// Split is set when the cell was cut out of a clump of touching cells.
	Split bool

	id int32
}

// Segmentation is the result of SegmentField. It holds the per-pixel
// assignment needed by Crop; it is plain Go memory and needs no Close.
type Segmentation struct {
	// Cells are the red cells, in raster order of their centres.
	Cells []SegmentedCell
	// WhiteCells are the boxes of white cells, excluded from Cells.
	WhiteCells []image.Rectangle
	// CellRadius is the median inscribed radius of the field's cells.
	CellRadius float64
	// Dropped counts regions rejected by the size filters or the border.
	Dropped int

	w, h int
	// Segment id per pixel, 0 = background: 16 bits when the ids fit
	// (always in practice: a field has hundreds of cells), else 32. It
	// is the one full-frame buffer kept after SegmentField returns.
	seg16 []uint16
	seg32 []int32
	opts  SegmentOptions
}

// segAt is the segment id of pixel i.
func (s *Segmentation) segAt(i int) int32 {
	if s.seg16 != nil {
		return int32(s.seg16[i])
	}
	return s.seg32[i]
}

func (s *Segmentation) setSeg(i int, id int32) {
	if s.seg16 != nil {
		s.seg16[i] = uint16(id)
	} else {
		s.seg32[i] = id
	}
}

// SegmentField finds the red cells of a thin-smear field. img must be 8-bit
// BGR (as Decoder.Decode returns it).
func SegmentField(img gocv.Mat, opts SegmentOptions) (*Segmentation, error) {
	opts = opts.withDefaults()
	if img.Empty() {
		return nil, fmt.Errorf("segment: %w: empty image", ErrNotField)
	}
	if img.Type() != gocv.MatTypeCV8UC3 {
		return nil, fmt.Errorf("segment: %w: want 8-bit BGR, got type %d with %d channels", ErrNotField, img.Type(), img.Channels())
	}
	w, h := img.Cols(), img.Rows()
	if w < 32 || h < 32 {
		return nil, fmt.Errorf("segment: %w: %dx%d is smaller than a cell", ErrNotField, w, h)
	}
	n := w * h

	// Full-frame buffers are closed as soon as they are no longer needed
	// (a 1920x1080 plane is 2 MB at 8 bits, 8 MB at 32): the daemon's
	// peak resident set is set by this function's peak.
	green := gocv.NewMat()
	defer green.Close()
	gocv.ExtractChannel(img, &green, 1)
	gocv.GaussianBlur(green, &green, image.Pt(5, 5), 1.0, 1.0, gocv.BorderReflect101)
	gs, err := green.DataPtrUint8()
	if err != nil {
		return nil, fmt.Errorf("segment: %w", err)
	}
	bg, err := background(green)
	if err != nil {
		return nil, err
	}
	defer bg.Close()
	bgs, err := bg.DataPtrUint8()
	if err != nil {
		return nil, fmt.Errorf("segment: %w", err)
	}

	// 1. Foreground mask, holes filled. The green channel is then only
	// needed for the nucleus test: it is overwritten with that test's
	// outcome (1 = nucleus-dark) so that the background can go.
	mask := gocv.NewMatWithSize(h, w, gocv.MatTypeCV8UC1)
	defer mask.Close()
	ms, _ := mask.DataPtrUint8()
	fg := float32(opts.Foreground)
	nuc := float32(opts.Nucleus)
	for i := range n {
		g, b := float32(gs[i]), float32(bgs[i])
		if g < fg*b {
			ms[i] = 255
		} else {
			ms[i] = 0
		}
		if g < nuc*b {
			gs[i] = 1
		} else {
			gs[i] = 0
		}
	}
	bg.Close()
	dark := gs
	k3 := gocv.GetStructuringElement(gocv.MorphEllipse, image.Pt(3, 3))
	defer k3.Close()
	gocv.MorphologyEx(mask, &mask, gocv.MorphOpen, k3)
	contours := gocv.FindContours(mask, gocv.RetrievalExternal, gocv.ChainApproxSimple)
	gocv.DrawContours(&mask, contours, -1, color.RGBA{255, 255, 255, 255}, -1)
	contours.Close()
	k5 := gocv.GetStructuringElement(gocv.MorphEllipse, image.Pt(5, 5))
	defer k5.Close()
	gocv.MorphologyEx(mask, &mask, gocv.MorphOpen, k5)

	// 2. Components and their distance transform.
	labels := gocv.NewMat()
	defer labels.Close()
	stats := gocv.NewMat()
	defer stats.Close()
	cents := gocv.NewMat()
	defer cents.Close()
	ncomp := gocv.ConnectedComponentsWithStats(mask, &labels, &stats, &cents)
	cents.Close()
	lb, err := int32s(&labels)
	if err != nil {
		return nil, err
	}
	comp := make([]component, ncomp)
	areas := make([]int, 0, ncomp)
	for c := 1; c < ncomp; c++ {
		x, y := int(stats.GetIntAt(c, 0)), int(stats.GetIntAt(c, 1))
		comp[c].box = image.Rect(x, y, x+int(stats.GetIntAt(c, 2)), y+int(stats.GetIntAt(c, 3)))
		comp[c].area = int(stats.GetIntAt(c, 4))
		if comp[c].area >= 50 {
			areas = append(areas, comp[c].area)
		}
	}
	s := &Segmentation{w: w, h: h, opts: opts}
	if len(areas) == 0 {
		s.seg16 = make([]uint16, n)
		return s, nil
	}
	sort.Ints(areas)

	// The distance transform and its peaks need no full resolution when
	// cells are large: at half scale they cost a quarter.
	ds := 1
	if math.Sqrt(float64(areas[len(areas)/2])/math.Pi) >= 16 {
		ds = 2
	}
	dmask := mask
	if ds > 1 {
		dmask = gocv.NewMat()
		defer dmask.Close()
		gocv.Resize(mask, &dmask, image.Pt(w/ds, h/ds), 0, 0, gocv.InterpolationNearestNeighbor)
		mask.Close()
	}
	dw, dh := dmask.Cols(), dmask.Rows()
	dt := gocv.NewMat()
	defer dt.Close()
	dtl := gocv.NewMat()
	defer dtl.Close()
	gocv.DistanceTransform(dmask, &dt, &dtl, gocv.DistL2, gocv.DistanceTransformMasks(5), gocv.DistanceLabelCComp)
	dtl.Close()
	if ds > 1 {
		dmask.Close()
	} else {
		mask.Close() // dmask is mask: close it once, through its own variable
	}
	dts, err := dt.DataPtrFloat32()
	if err != nil {
		return nil, fmt.Errorf("segment: %w", err)
	}
	// dlb is the component label under each reduced pixel.
	dlb := make([]int32, dw*dh)
	for y := range dh {
		row := lb[y*ds*w:]
		for x := range dw {
			l := row[x*ds]
			dlb[y*dw+x] = l
			if l > 0 && dts[y*dw+x] > comp[l].peak {
				comp[l].peak = dts[y*dw+x]
			}
		}
	}
	var peaks []float64
	for c := 1; c < ncomp; c++ {
		if comp[c].area >= 50 {
			peaks = append(peaks, float64(comp[c].peak))
		}
	}
	sort.Float64s(peaks)
	rEst := peaks[len(peaks)/2] // reduced pixels
	s.CellRadius = rEst * float64(ds)

	// Markers: local maxima of the distance transform, at least half a
	// typical radius deep.
	ksz := max(3, int(0.6*rEst)|1)
	kmax := gocv.GetStructuringElement(gocv.MorphRect, image.Pt(ksz, ksz))
	defer kmax.Close()
	dtMax := gocv.NewMat()
	defer dtMax.Close()
	gocv.Dilate(dt, &dtMax, kmax)
	dms, _ := dtMax.DataPtrFloat32()
	minPeak := float32(0.45 * rEst)
	var cands []marker
	for i, v := range dts {
		if v >= minPeak && v >= dms[i] {
			cands = append(cands, marker{x: i % dw, y: i / dw, r: v, comp: dlb[i]})
		}
	}
	dtMax.Close()
	dlb = nil
	sort.Slice(cands, func(a, b int) bool {
		if cands[a].r != cands[b].r {
			return cands[a].r > cands[b].r
		}
		return cands[a].y*dw+cands[a].x < cands[b].y*dw+cands[b].x
	})
	for _, m := range cands {
		c := &comp[m.comp]
		if !separate(dts, dw, m, c.markers) {
			continue
		}
		c.markers = append(c.markers, m)
	}
	dt.Close()
	// Back to full-resolution pixels.
	for c := range comp {
		for k, m := range comp[c].markers {
			comp[c].markers[k] = marker{x: m.x*ds + ds/2, y: m.y*ds + ds/2, r: m.r * float32(ds), comp: m.comp}
		}
	}

	// 3. Assign pixels to markers: segment ids are allocated per marker.
	type segInfo struct {
		m       marker
		box     image.Rectangle
		area    int
		dark    int
		border  bool
		split   bool
		discard bool
	}
	segs := []segInfo{{}} // id 0 = background
	nsegs := 1
	for c := 1; c < ncomp; c++ {
		nsegs += len(comp[c].markers)
	}
	if nsegs <= math.MaxUint16+1 {
		s.seg16 = make([]uint16, n)
	} else {
		s.seg32 = make([]int32, n)
	}
	for c := 1; c < ncomp; c++ {
		cp := &comp[c]
		if len(cp.markers) == 0 {
			s.Dropped++
			continue
		}
		base := int32(len(segs))
		for _, m := range cp.markers {
			segs = append(segs, segInfo{m: m, box: image.Rectangle{Min: image.Pt(w, h)}, split: len(cp.markers) > 1})
		}
		for y := cp.box.Min.Y; y < cp.box.Max.Y; y++ {
			for x := cp.box.Min.X; x < cp.box.Max.X; x++ {
				i := y*w + x
				if lb[i] != int32(c) {
					continue
				}
				best := 0
				if len(cp.markers) > 1 {
					bd := math.Inf(1)
					for k, m := range cp.markers {
						dx, dy := float64(x-m.x), float64(y-m.y)
						d := dx*dx + dy*dy - float64(m.r)*float64(m.r)
						if d < bd {
							bd, best = d, k
						}
					}
				}
				id := base + int32(best)
				s.setSeg(i, id)
				si := &segs[id]
				si.area++
				si.box.Min.X = min(si.box.Min.X, x)
				si.box.Min.Y = min(si.box.Min.Y, y)
				si.box.Max.X = max(si.box.Max.X, x+1)
				si.box.Max.Y = max(si.box.Max.Y, y+1)
				si.dark += int(dark[i])
			}
		}
	}

	labels.Close()
	green.Close()

	// 4. Filters and output.
	areas = areas[:0]
	for _, si := range segs[1:] {
		areas = append(areas, si.area)
	}
	if len(areas) == 0 {
		return s, nil
	}
	sort.Ints(areas)
	med := float64(areas[len(areas)/2])
	for id := 1; id < len(segs); id++ {
		si := &segs[id]
		a := float64(si.area)
		dark := float64(si.dark) / a
		// White cells: a nucleus covering a large share of the cell
		// (lymphocyte), or a large cell with a sizeable nucleus
		// (neutrophil). No parasite stage is that dark over that area.
		if dark >= 0.4 || (a >= 1.7*med && dark >= 0.08) {
			s.WhiteCells = append(s.WhiteCells, si.box)
			si.discard = true
			continue
		}
		si.border = si.box.Min.X == 0 || si.box.Min.Y == 0 || si.box.Max.X == w || si.box.Max.Y == h
		if a < opts.MinArea*med || a > opts.MaxArea*med || (si.border && !opts.KeepBorder) {
			si.discard = true
			s.Dropped++
			continue
		}
		box := si.box
		if si.split {
			// Add back the part of the cell hidden under its neighbour.
			r := int(math.Round(float64(si.m.r)))
			box = box.Union(image.Rect(si.m.x-r, si.m.y-r, si.m.x+r+1, si.m.y+r+1)).Intersect(image.Rect(0, 0, w, h))
		}
		s.Cells = append(s.Cells, SegmentedCell{
			Box: box, Center: image.Pt(si.m.x, si.m.y), Radius: float64(si.m.r),
			Area: si.area, Split: si.split, id: int32(id),
		})
	}
	for i, si := range segs {
		if si.discard {
			segs[i].area = -1
		}
	}
	if s.seg16 != nil {
		for i, id := range s.seg16 {
			if id > 0 && segs[id].area < 0 {
				s.seg16[i] = 0
			}
		}
	} else {
		for i, id := range s.seg32 {
			if id > 0 && segs[id].area < 0 {
				s.seg32[i] = 0
			}
		}
	}
	sort.Slice(s.Cells, func(a, b int) bool {
		ca, cb := s.Cells[a].Center, s.Cells[b].Center
		if ca.Y != cb.Y {
			return ca.Y < cb.Y
		}
		return ca.X < cb.X
	})
	return s, nil
}

type component struct {
	box     image.Rectangle
	area    int
	peak    float32
	markers []marker
}

type marker struct {
	x, y int
	r    float32
	comp int32
}

// separate reports whether candidate m is a new cell rather than another
// peak of one already found: between m and every accepted marker of the
// same clump the distance transform must dip (a saddle, where two cells
// meet) below 0.8 of the lower peak.
func separate(dts []float32, w int, m marker, accepted []marker) bool {
	for _, a := range accepted {
		dx, dy := float64(a.x-m.x), float64(a.y-m.y)
		d := math.Hypot(dx, dy)
		if d < 2 {
			return false
		}
		lo := float32(math.Inf(1))
		steps := int(d)
		for k := 0; k <= steps; k++ {
			t := float64(k) / float64(steps)
			x := int(math.Round(float64(m.x) + dx*t))
			y := int(math.Round(float64(m.y) + dy*t))
			lo = min(lo, dts[y*w+x])
		}
		if lo >= 0.8*min(a.r, m.r) {
			return false
		}
	}
	return true
}

// background estimates the empty-slide brightness of the green channel at
// every pixel: a maximum filter wider than any cell on a reduced image,
// smoothed and scaled back up.
func background(green gocv.Mat) (gocv.Mat, error) {
	const f = 8
	w, h := green.Cols(), green.Rows()
	small := gocv.NewMat()
	defer small.Close()
	sw, sh := max(w/f, 1), max(h/f, 1)
	gocv.Resize(green, &small, image.Pt(sw, sh), 0, 0, gocv.InterpolationArea)
	k := gocv.GetStructuringElement(gocv.MorphRect, image.Pt(15, 15))
	defer k.Close()
	gocv.Dilate(small, &small, k)
	gocv.GaussianBlur(small, &small, image.Pt(15, 15), 0, 0, gocv.BorderReflect101)
	out := gocv.NewMat()
	gocv.Resize(small, &out, image.Pt(w, h), 0, 0, gocv.InterpolationLinear)
	if !out.IsContinuous() || out.Cols() != w || out.Rows() != h {
		out.Close()
		return gocv.NewMat(), fmt.Errorf("segment: background estimate has the wrong shape")
	}
	return out, nil
}

// int32s views a CV_32S Mat's data as Go int32s (no copy; valid until
// the Mat is closed).
func int32s(m *gocv.Mat) ([]int32, error) {
	if m.Type() != gocv.MatTypeCV32S {
		return nil, fmt.Errorf("segment: labels have type %d, want CV_32S", m.Type())
	}
	b, err := m.DataPtrUint8()
	if err != nil {
		return nil, fmt.Errorf("segment: %w", err)
	}
	if len(b) == 0 {
		return nil, nil
	}
	return unsafe.Slice((*int32)(unsafe.Pointer(&b[0])), len(b)/4), nil
}

// Crop cuts cell i out of the field img (the image that was segmented) as
// a square 8-bit BGR crop like the classifier's training crops: the cell
// centred, everything that is not the cell black. The caller closes the
// returned Mat. Crop only reads, so crops of one field may be cut from
// several goroutines at once.
func (s *Segmentation) Crop(img gocv.Mat, i int) (gocv.Mat, error) {
	if i < 0 || i >= len(s.Cells) {
		return gocv.NewMat(), fmt.Errorf("crop: cell %d out of range (have %d)", i, len(s.Cells))
	}
	if img.Cols() != s.w || img.Rows() != s.h || img.Type() != gocv.MatTypeCV8UC3 {
		return gocv.NewMat(), fmt.Errorf("crop: image %dx%d type %d is not the %dx%d BGR field that was segmented", img.Cols(), img.Rows(), img.Type(), s.w, s.h)
	}
	src := img
	if !img.IsContinuous() {
		src = img.Clone()
		defer src.Close()
	}
	px, err := src.DataPtrUint8()
	if err != nil {
		return gocv.NewMat(), fmt.Errorf("crop: %w", err)
	}
	c := s.Cells[i]
	side := max(c.Box.Dx(), c.Box.Dy()) + 2*s.opts.CropBorder
	cx, cy := (c.Box.Min.X+c.Box.Max.X)/2, (c.Box.Min.Y+c.Box.Max.Y)/2
	r := image.Rect(cx-side/2, cy-side/2, cx-side/2+side, cy-side/2+side)
	out := make([]byte, side*side*3)
	vis := r.Intersect(image.Rect(0, 0, s.w, s.h))
	for y := vis.Min.Y; y < vis.Max.Y; y++ {
		for x := vis.Min.X; x < vis.Max.X; x++ {
			if !s.owns(c.id, x, y) {
				continue
			}
			si := (y*s.w + x) * 3
			di := ((y-r.Min.Y)*side + (x - r.Min.X)) * 3
			copy(out[di:di+3], px[si:si+3])
		}
	}
	return gocv.NewMatFromBytes(side, side, gocv.MatTypeCV8UC3, out)
}

// owns reports whether pixel (x,y) belongs to segment id, counting the
// one-pixel background rim around it: the foreground threshold cuts the
// soft edge of a cell, which the training crops keep.
func (s *Segmentation) owns(id int32, x, y int) bool {
	v := s.segAt(y*s.w + x)
	if v == id {
		return true
	}
	if v != 0 {
		return false
	}
	for dy := -1; dy <= 1; dy++ {
		for dx := -1; dx <= 1; dx++ {
			xx, yy := x+dx, y+dy
			if xx >= 0 && yy >= 0 && xx < s.w && yy < s.h && s.segAt(yy*s.w+xx) == id {
				return true
			}
		}
	}
	return false
}
