package inference

import "math"

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
}

// AppearanceNames names Appearance.Values, in order. A plausibility
// reference stores these names, so that a reference made by another build
// with other statistics is refused rather than misread.
var AppearanceNames = []string{"background", "border", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation", "focus"}

// Values lists the statistics in AppearanceNames order.
func (a Appearance) Values() []float64 {
	return []float64{a.Background, a.Border, a.Mean[0], a.Mean[1], a.Mean[2], a.Std[0], a.Std[1], a.Std[2], a.Saturation, a.Focus}
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
	return a
}
