// Package synth generates synthetic Giemsa-stained thin-smear microscopy:
// single red-cell crops in the style of the NIH malaria cell set and whole
// 1920x1080 fields with ground truth. Everything is deterministic by seed;
// every image belongs to a slide whose staining, illumination, focus,
// density and parasitemia differ from the other slides, and drift knobs
// (Knobs) move a whole run away from the nominal microscope.
//
// In memory: NewSlide and Slide.Cell / Slide.Field draw single images;
// CellAt, FieldAt and Stream give whole runs, where item i depends only on
// (seed, knobs, items per slide, i). On disk (WriteCells, WriteFields, the
// `scopewatch synth` command): DIR/<slide>/cell_NNNNNN.png with
// DIR/labels.csv (path,label,slide), or DIR/<slide>/field_NNN.png with its
// truth in field_NNN.json; slide ids are s<seed>-<index>.
//
// synth is pure Go so that the drift and tuning tests and the training
// recipe can use it without OpenCV.
package synth

import (
	"fmt"
	"math"
)

// Knobs are drift knobs applied on top of the per-slide variation. The zero
// value is the nominal microscope. Names in validation errors are the
// command-line flag names (stain-shift, blur, ...).
type Knobs struct {
	// StainShift rotates the hue of every stain (eosin pink and the Giemsa
	// purples), in degrees; positive is towards blue.
	StainShift float64 `json:"stain_shift,omitempty"`
	// Blur adds defocus: a gaussian of this sigma (pixels) combined in
	// quadrature with the slide's own focus blur.
	Blur float64 `json:"blur,omitempty"`
	// Brightness is added to every channel after gamma, in units of full
	// scale (-1..1).
	Brightness float64 `json:"brightness,omitempty"`
	// Gamma is applied as v^Gamma to intensities in 0..1; 0 means 1.
	Gamma float64 `json:"gamma,omitempty"`
	// Noise is the sigma of additive gaussian sensor noise (full scale 1),
	// combined in quadrature with the slide's own noise.
	Noise float64 `json:"noise,omitempty"`
	// JPEGQuality 0 means lossless PNG output; 1..100 writes JPEG at that
	// quality (and in-memory images carry the JPEG artefacts).
	JPEGQuality int `json:"jpeg_quality,omitempty"`
	// Magnification scales every geometric size (cells, parasites, crop
	// sizes); 0 means 1. In fields a higher magnification leaves fewer cells
	// per field.
	Magnification float64 `json:"magnification,omitempty"`
	// Prevalence is the fraction of parasitized red cells. 0 means the
	// default mix: 0.5 for crops (balanced, like the NIH set) and a
	// per-slide parasitemia for fields (a quarter of the slides negative,
	// the others uniform in 0.5%..10%). Use ZeroPrevalence for slides
	// without any parasite.
	Prevalence float64 `json:"prevalence,omitempty"`
}

// ZeroPrevalence asks for no parasitized cells at all (Prevalence 0 already
// means "default").
const ZeroPrevalence = -1

// Default prevalences when Knobs.Prevalence is 0.
const (
	DefaultCropPrevalence = 0.5
	negativeSlideFraction = 0.25
	minFieldParasitemia   = 0.005
	maxFieldParasitemia   = 0.10
)

// Validate checks the knob ranges. The error names the knob by its flag
// name and gives the accepted range.
func (k Knobs) Validate() error {
	check := func(name string, v, lo, hi float64) error {
		if math.IsNaN(v) || v < lo || v > hi {
			return fmt.Errorf("%s: %v out of range, want %g..%g", name, v, lo, hi)
		}
		return nil
	}
	if err := check("stain-shift", k.StainShift, -180, 180); err != nil {
		return err
	}
	if err := check("blur", k.Blur, 0, 20); err != nil {
		return err
	}
	if err := check("brightness", k.Brightness, -1, 1); err != nil {
		return err
	}
	if k.Gamma != 0 {
		if err := check("gamma", k.Gamma, 0.1, 10); err != nil {
			return fmt.Errorf("%w (or 0 for nominal)", err)
		}
	}
	if err := check("noise", k.Noise, 0, 1); err != nil {
		return err
	}
	if k.JPEGQuality < 0 || k.JPEGQuality > 100 {
		return fmt.Errorf("jpeg-quality: %d out of range, want 1..100 (or 0 for PNG)", k.JPEGQuality)
	}
	if k.Magnification != 0 {
		if err := check("magnification", k.Magnification, 0.25, 4); err != nil {
			return fmt.Errorf("%w (or 0 for nominal)", err)
		}
	}
	if k.Prevalence != ZeroPrevalence {
		if err := check("prevalence", k.Prevalence, 0, 1); err != nil {
			return fmt.Errorf("%w (or %d for none)", err, ZeroPrevalence)
		}
	}
	return nil
}

func (k Knobs) mag() float64 {
	if k.Magnification == 0 {
		return 1
	}
	return k.Magnification
}

func (k Knobs) gamma() float64 {
	if k.Gamma == 0 {
		return 1
	}
	return k.Gamma
}

// Ext is the file extension images written with these knobs get.
func (k Knobs) Ext() string {
	if k.JPEGQuality > 0 {
		return ".jpg"
	}
	return ".png"
}
