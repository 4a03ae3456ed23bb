package synth

import (
	"fmt"
	"image"
	"math"
	"math/rand"
)

// Label is the class of a red cell.
type Label uint8

const (
	Uninfected Label = iota
	Parasitized
)

func (l Label) String() string {
	if l == Parasitized {
		return "parasitized"
	}
	return "uninfected"
}

// ParseLabel is the inverse of Label.String.
func ParseLabel(s string) (Label, error) {
	switch s {
	case "parasitized":
		return Parasitized, nil
	case "uninfected":
		return Uninfected, nil
	}
	return 0, fmt.Errorf("label %q: want parasitized or uninfected", s)
}

// Slide holds what one stained smear under one microscope session shares:
// every cell and field of a slide is drawn with these parameters. The
// fields are exported so that tests and reports can show what varied.
type Slide struct {
	ID    string `json:"id"`
	Knobs Knobs  `json:"knobs"`

	// StainHue is the hue offset of every stain in degrees (slide
	// variation plus Knobs.StainShift).
	StainHue float64 `json:"stain_hue"`
	// StainIntensity scales the Giemsa stains (parasites, platelets,
	// nuclei); RBCIntensity scales the eosin/haemoglobin pink.
	StainIntensity float64 `json:"stain_intensity"`
	RBCIntensity   float64 `json:"rbc_intensity"`
	// Illumination is the lamp's RGB (0..1) seen through the empty slide.
	Illumination [3]float64 `json:"illumination"`
	// Vignetting darkens field corners by this fraction.
	Vignetting float64 `json:"vignetting"`
	// Focus is the slide's own defocus blur sigma in pixels; Blur is the
	// total sigma including Knobs.Blur.
	Focus float64 `json:"focus"`
	Blur  float64 `json:"blur"`
	// Noise is the sensor noise sigma including Knobs.Noise.
	Noise float64 `json:"noise"`
	// Density (0..1) sets how many cells a field holds.
	Density float64 `json:"density"`
	// Parasitemia is the probability that a red cell in this slide's fields
	// is parasitized; CropPrevalence the same for cell crops.
	Parasitemia    float64 `json:"parasitemia"`
	CropPrevalence float64 `json:"crop_prevalence"`
	// CropRadius and FieldRadius are mean red-cell radii in pixels for crops
	// and for fields (fields are taken at a lower magnification).
	CropRadius  float64 `json:"crop_radius"`
	FieldRadius float64 `json:"field_radius"`

	pal palette
}

// palette is the slide's stains as OD vectors.
type palette struct {
	rbc, cyto, chrom, pigment, platelet, granule, debris, hj, nucleus, neutroCyto, lymphCyto odVec
}

// Reference colours (transmittance at unit amount) of a well-stained
// Giemsa thin film.
var (
	colRBC        = [3]float64{0.80, 0.50, 0.58}
	colCyto       = [3]float64{0.50, 0.42, 0.80}
	colChrom      = [3]float64{0.45, 0.10, 0.42}
	colPigment    = [3]float64{0.42, 0.36, 0.24}
	colPlatelet   = [3]float64{0.76, 0.64, 0.86}
	colGranule    = [3]float64{0.58, 0.42, 0.72}
	colDebris     = [3]float64{0.42, 0.40, 0.48}
	colHJ         = [3]float64{0.36, 0.20, 0.50}
	colNucleus    = [3]float64{0.40, 0.24, 0.58}
	colNeutroCyto = [3]float64{0.92, 0.84, 0.90}
	colLymphCyto  = [3]float64{0.74, 0.80, 0.94}
)

// NewSlide draws a slide's parameters from rng. The id must be unique
// across everything generated together (see SlideID).
func NewSlide(id string, rng *rand.Rand, k Knobs) Slide {
	s := Slide{ID: id, Knobs: k}
	s.StainHue = rng.NormFloat64()*5 + k.StainShift
	s.StainIntensity = 0.75 + 0.5*rng.Float64()
	s.RBCIntensity = 0.8 + 0.4*rng.Float64()
	bright := 0.86 + 0.14*rng.Float64()
	for i := range s.Illumination {
		s.Illumination[i] = bright
	}
	// Lamp colour temperature: warmer or cooler.
	temp := rng.NormFloat64() * 0.025
	s.Illumination[0] *= 1 + temp
	s.Illumination[2] *= 1 - temp
	s.Vignetting = 0.08 * rng.Float64()
	s.Focus = 0.35 + 0.8*rng.Float64()
	s.Blur = math.Hypot(s.Focus, k.Blur)
	s.Noise = math.Hypot(0.004+0.008*rng.Float64(), k.Noise)
	s.Density = rng.Float64()

	mag := k.mag()
	s.CropRadius = (52 + 14*rng.Float64()) * mag
	s.FieldRadius = (22 + 7*rng.Float64()) * mag

	pr := rng.Float64()
	if pr < negativeSlideFraction {
		s.Parasitemia = 0
	} else {
		s.Parasitemia = minFieldParasitemia + (maxFieldParasitemia-minFieldParasitemia)*rng.Float64()
	}
	s.CropPrevalence = DefaultCropPrevalence
	switch {
	case k.Prevalence == ZeroPrevalence:
		s.Parasitemia, s.CropPrevalence = 0, 0
	case k.Prevalence > 0:
		s.Parasitemia, s.CropPrevalence = k.Prevalence, k.Prevalence
	}

	rbcHue := s.StainHue + rng.NormFloat64()*4
	gi := s.StainIntensity
	s.pal = palette{
		rbc:        odOf(rotateHue(colRBC, rbcHue)).scale(s.RBCIntensity),
		cyto:       odOf(rotateHue(colCyto, s.StainHue)).scale(gi),
		chrom:      odOf(rotateHue(colChrom, s.StainHue)).scale(gi),
		pigment:    odOf(colPigment),
		platelet:   odOf(rotateHue(colPlatelet, s.StainHue)).scale(gi),
		granule:    odOf(rotateHue(colGranule, s.StainHue)).scale(gi),
		debris:     odOf(rotateHue(colDebris, s.StainHue)).scale(gi),
		hj:         odOf(rotateHue(colHJ, s.StainHue)).scale(gi),
		nucleus:    odOf(rotateHue(colNucleus, s.StainHue)).scale(gi),
		neutroCyto: odOf(rotateHue(colNeutroCyto, s.StainHue)).scale(gi),
		lymphCyto:  odOf(rotateHue(colLymphCyto, s.StainHue)).scale(gi),
	}
	return s
}

// SlideID names slide index i of the run with the given seed; a new seed
// therefore means new slides.
func SlideID(seed int64, i int) string { return fmt.Sprintf("s%d-%d", seed, i) }

// splitmix64 finaliser: derives independent seeds from (seed, indices) so
// that an item's pixels depend only on its index, not on scheduling.
func mixSeed(seed int64, parts ...uint64) int64 {
	h := uint64(seed) ^ 0x9e3779b97f4a7c15
	for _, p := range parts {
		h ^= p + 0x9e3779b97f4a7c15 + (h << 6) + (h >> 2)
		h += 0x9e3779b97f4a7c15
		h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9
		h = (h ^ (h >> 27)) * 0x94d049bb133111eb
		h ^= h >> 31
	}
	return int64(h)
}

// Seed domains keep slide, crop and field streams apart.
const (
	domSlide uint64 = iota + 1
	domCell
	domFieldSlide
	domField
)

func newRand(seed int64) *rand.Rand { return rand.New(rand.NewSource(seed)) }

// develop turns optical density into an 8-bit RGB image: illumination,
// absorption, optics blur, the camera's gamma/brightness, sensor noise and
// quantisation. mask, if not nil, blacks out everything outside the cell as
// the NIH crops do.
func (s *Slide) develop(c *canvas, rng *rand.Rand, mask *patch) *image.RGBA {
	w, h := c.w, c.h
	n := w * h
	var planes [3][]float32
	cx, cy := float64(w)/2, float64(h)/2
	rmax2 := cx*cx + cy*cy
	for ch := 0; ch < 3; ch++ {
		p := c.od[ch] // reused: intensity overwrites OD in place
		ill := float32(s.Illumination[ch])
		for i := 0; i < n; i++ {
			p[i] = ill * expNeg(p[i])
		}
		if s.Vignetting > 0 && mask == nil {
			for y := 0; y < h; y++ {
				dy := float64(y) + 0.5 - cy
				for x := 0; x < w; x++ {
					dx := float64(x) + 0.5 - cx
					p[y*w+x] *= float32(1 - s.Vignetting*(dx*dx+dy*dy)/rmax2)
				}
			}
		}
		planes[ch] = p
	}
	if s.Blur >= 0.05 {
		tmp := getFloats(n)
		for ch := range planes {
			gaussBlur(planes[ch], w, h, s.Blur, tmp)
		}
		putFloats(tmp)
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	g := s.Knobs.gamma()
	br := s.Knobs.Brightness
	noise := s.Noise
	for y := 0; y < h; y++ {
		for x := 0; x < w; x++ {
			i := y*w + x
			var m float32 = 1
			o := img.PixOffset(x, y)
			if mask != nil {
				if m = mask.at(x, y); m == 0 {
					img.Pix[o+3] = 255 // black outside the cell
					continue
				}
			}
			for ch := 0; ch < 3; ch++ {
				v := float64(planes[ch][i])
				if g != 1 {
					v = math.Pow(clamp01(v), g)
				}
				v += br + noise*gauss(rng)
				v = clamp01(v) * float64(m)
				img.Pix[o+ch] = uint8(v*255 + 0.5)
			}
			img.Pix[o+3] = 255
		}
	}
	return img
}

// expNeg is exp(-x) for x >= 0 by table lookup with linear interpolation:
// the exact function dominated rendering time and 8-bit output cannot tell
// the difference (relative error < 1e-5).
func expNeg(x float32) float32 {
	if x <= 0 {
		if x == 0 {
			return 1
		}
		return float32(math.Exp(-float64(x)))
	}
	f := x * expSteps
	i := int(f)
	if i >= len(expTable)-1 {
		return 0
	}
	t := f - float32(i)
	return expTable[i] + t*(expTable[i+1]-expTable[i])
}

const expSteps = 512

var expTable = func() []float32 {
	t := make([]float32, 12*expSteps+2)
	for i := range t {
		t[i] = float32(math.Exp(-float64(i) / expSteps))
	}
	return t
}()

// gauss is a standard normal deviate from a quantile table: per-pixel
// noise needs millions of draws per field and the ziggurat's exactness
// buys nothing at 8 bits. Each draw costs one Uint32.
func gauss(rng *rand.Rand) float64 {
	return gaussTable[rng.Uint32()>>(32-gaussBits)]
}

const gaussBits = 12

var gaussTable = func() []float64 {
	t := make([]float64, 1<<gaussBits)
	for i := range t {
		p := (float64(i) + 0.5) / float64(len(t))
		t[i] = math.Sqrt2 * math.Erfinv(2*p-1)
	}
	return t
}()
