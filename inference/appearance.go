package inference

import (
	"image"
	"math"

	"gocv.io/x/gocv"
)

// Appearance is what a crop looks like at the model's input size, in 8-bit
// RGB after the resize: the colour, texture and layout statistics the
// plausibility gate compares with nominal red cells. The backbone gives a
// confident class to anything (noise, a solid colour, a photograph); these
// numbers describe the image itself, so that what is not a stained cell on
// a black background can be refused before its class is read.
//
// The foreground is what Focus calls the cell: pixels whose grey level is
// above focusBlack (crops are cells on black, the NIH convention and what
// Segmentation.Crop produces).
type Appearance struct {
	// Background is the fraction of pixels at or below the black level.
	Background float64
	// Border is the fraction of the image's outermost pixels brighter
	// than borderLevel: a centred cell leaves the frame's edge black, and
	// a cell cut by the frame cannot be judged (segmentation drops those
	// too). The level is above the black level because lossy compression
	// lifts the black next to a cell by a few grey levels.
	Border float64
	// Mean and Std are the R, G, B levels (0..255) over the foreground.
	Mean, Std [3]float64
	// Saturation is the mean HSV saturation (0..1) over the foreground:
	// stained cells are pink or purple, never grey.
	Saturation float64
	// Focus is Preprocessor.Focus of the same input.
	Focus float64
	// Sharpness is the log ratio of the Laplacian's variance over the
	// cell's interior after a Gaussian blur of sigma 1 and of sigma 2 px
	// (see sharpness): near 0 for a blurred image, larger for a sharp one.
	Sharpness float64
}

// AppearanceNames names Appearance.Values, in order. A plausibility
// reference stores these names, so that a reference made by another build
// with other statistics is refused rather than misread.
var AppearanceNames = []string{"background", "border", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation", "focus", "sharpness"}

// Values lists the statistics in AppearanceNames order.
func (a Appearance) Values() []float64 {
	return []float64{a.Background, a.Border, a.Mean[0], a.Mean[1], a.Mean[2], a.Std[0], a.Std[1], a.Std[2], a.Saturation, a.Focus, a.Sharpness}
}

// borderLevel is the grey level above which a border pixel counts as part
// of something: JPEG at quality 75-90 moves the black around a cell by up to
// about 10 levels, a cell's own pixels are far brighter.
const borderLevel = 32

// Appearance measures one preprocessed image (in, as Mat or BGR filled it).
// An image without foreground has Mean, Std and Saturation 0. Cost: one
// pass over width x height pixels plus Focus.
func (p *Preprocessor) Appearance(in []float32) Appearance {
	w, h := p.spec.Width, p.spec.Height
	n := w * h
	var a Appearance
	if len(in) != 3*n || n == 0 {
		return a
	}
	// The normalised value of output channel c back to its 8-bit level:
	// pixel = (value*std + mean) / scale. rgb[k] is the output channel
	// holding R, G, B (src is the BGR index feeding each channel).
	var mul, add [3]float64
	var rgb [3]int
	for c := range 3 {
		mul[c] = p.spec.Std[c] / p.spec.Scale
		add[c] = p.spec.Mean[c] / p.spec.Scale
		rgb[2-p.src[c]] = c
	}
	at := func(i, c int) float64 {
		var v float32
		if p.spec.Layout == "NCHW" {
			v = in[c*n+i]
		} else {
			v = in[3*i+c]
		}
		return float64(v)*mul[c] + add[c]
	}
	greyM := gocv.NewMatWithSize(h, w, gocv.MatTypeCV32F)
	defer greyM.Close()
	fgM := gocv.NewMatWithSize(h, w, gocv.MatTypeCV8U)
	defer fgM.Close()
	greyPx, _ := greyM.DataPtrFloat32()
	fgPx, _ := fgM.DataPtrUint8()
	var cnt, border, borderFg int
	var s, s2 [3]float64
	var sat float64
	for y := range h {
		for x := range w {
			i := y*w + x
			var v [3]float64
			for k := range 3 {
				v[k] = at(i, rgb[k])
			}
			// Luma as Focus computes it, so that both agree on the cell.
			grey := luma[2]*v[0] + luma[1]*v[1] + luma[0]*v[2]
			greyPx[i] = float32(grey)
			fgPx[i] = 0
			if grey > focusBlack {
				fgPx[i] = 255
			}
			if x == 0 || y == 0 || x == w-1 || y == h-1 {
				border++
				if grey > borderLevel {
					borderFg++
				}
			}
			if !(grey > focusBlack) {
				continue
			}
			cnt++
			for k := range 3 {
				s[k] += v[k]
				s2[k] += v[k] * v[k]
			}
			hi := max(v[0], v[1], v[2])
			lo := min(v[0], v[1], v[2])
			if hi > 0 {
				sat += (hi - lo) / hi
			}
		}
	}
	a.Background = float64(n-cnt) / float64(n)
	a.Border = float64(borderFg) / float64(border)
	if cnt > 0 {
		for k := range 3 {
			m := s[k] / float64(cnt)
			a.Mean[k] = m
			a.Std[k] = math.Sqrt(max(s2[k]/float64(cnt)-m*m, 0))
		}
		a.Saturation = sat / float64(cnt)
	}
	a.Focus = p.Focus(in)
	a.Sharpness = sharpness(greyM, fgM)
	return a
}

// sharpnessErode is how far (px, at the model's input size) the interior
// that sharpness reads stays from the cell's outline: beyond the reach of
// the sigma-2 blur's bulk (3 sigma), so that the sharp step to black does
// not enter the measure.
const sharpnessErode = 6

// sharpness compares the grey image's fine detail at two scales: the
// variance of the Laplacian over the cell's interior after a Gaussian blur
// of sigma 1 px, over the same after sigma 2 px, as a natural log. Focus
// (the Laplacian at full resolution) follows sensor noise and contrast as
// much as defocus; both blurs remove pixel noise, and the ratio cancels
// contrast, so what is left is how much detail lives between the two
// scales, which defocus removes first. Measured on synth's crops (128 px):
// nominal slides average 1.25..1.85, slides blurred by sigma 2 px
// 1.01..1.14. Images with fewer than focusMinCount interior pixels use
// the whole foreground; without foreground it is 0.
func sharpness(grey, fg gocv.Mat) float64 {
	b1, b2 := gocv.NewMat(), gocv.NewMat()
	defer b1.Close()
	defer b2.Close()
	gocv.GaussianBlur(grey, &b1, image.Point{}, 1, 1, gocv.BorderReplicate)
	gocv.GaussianBlur(grey, &b2, image.Point{}, 2, 2, gocv.BorderReplicate)
	l1, l2 := gocv.NewMat(), gocv.NewMat()
	defer l1.Close()
	defer l2.Close()
	gocv.Laplacian(b1, &l1, gocv.MatTypeCV32F, 1, 1, 0, gocv.BorderReplicate)
	gocv.Laplacian(b2, &l2, gocv.MatTypeCV32F, 1, 1, 0, gocv.BorderReplicate)
	inner := gocv.NewMat()
	defer inner.Close()
	k := gocv.GetStructuringElement(gocv.MorphRect, image.Pt(2*sharpnessErode+1, 2*sharpnessErode+1))
	defer k.Close()
	gocv.ErodeWithParams(fg, &inner, k, image.Pt(-1, -1), 1, int(gocv.BorderConstant))
	m, _ := inner.DataPtrUint8()
	if gocv.CountNonZero(inner) < focusMinCount {
		m, _ = fg.DataPtrUint8()
	}
	v1, _ := l1.DataPtrFloat32()
	v2, _ := l2.DataPtrFloat32()
	var n, s1, q1, s2, q2 float64
	for i, on := range m {
		if on == 0 {
			continue
		}
		a, b := float64(v1[i]), float64(v2[i])
		n++
		s1, q1, s2, q2 = s1+a, q1+a*a, s2+b, q2+b*b
	}
	if n == 0 {
		return 0
	}
	var1 := max(q1/n-(s1/n)*(s1/n), 0)
	var2 := max(q2/n-(s2/n)*(s2/n), 0)
	// The floor keeps a flat interior (a solid colour) finite: no detail
	// at either scale reads as 0, like a blurred cell.
	const floor = 1e-2
	return math.Log((var1 + floor) / (var2 + floor))
}
