package synth

import (
	"bytes"
	"fmt"
	"image"
	"image/jpeg"
	"image/png"
	"io"
	"math/rand"
	"sync"
)

// DefaultCellsPerSlide is how many crops a slide contributes unless told
// otherwise: enough slides for slide-disjoint splits, enough cells per slide
// for slide effects to matter.
const DefaultCellsPerSlide = 50

// Sample is one generated cell crop.
type Sample struct {
	// Index is the crop's position in its run; Name is its file stem.
	Index int
	Name  string
	Slide string
	Label Label
	Info  CellInfo
	// Image is the crop as a camera would deliver it (with JPEG artefacts
	// when Knobs.JPEGQuality is set).
	Image image.Image
	// raw is the lossless render, kept for encoding without a second
	// lossy round.
	raw *image.RGBA
}

// CellAt generates crop i of the run (seed, knobs, cellsPerSlide). It
// depends only on its arguments, so any subset of a run can be produced in
// any order or in parallel with identical results.
func CellAt(seed int64, k Knobs, cellsPerSlide, i int) Sample {
	if cellsPerSlide <= 0 {
		cellsPerSlide = DefaultCellsPerSlide
	}
	si := i / cellsPerSlide
	slide := NewSlide(SlideID(seed, si), newRand(mixSeed(seed, domSlide, uint64(si))), k)
	return slide.sample(newRand(mixSeed(seed, domCell, uint64(i))), i)
}

func (s *Slide) sample(rng *rand.Rand, i int) Sample {
	label := s.drawLabel(rng)
	raw, info := s.RenderCell(rng, label)
	return Sample{
		Index: i,
		Name:  fmt.Sprintf("cell_%06d", i),
		Slide: s.ID,
		Label: label,
		Info:  info,
		Image: s.finish(raw),
		raw:   raw,
	}
}

// drawLabel is the first draw of every crop: tests use it to check label
// frequencies without rendering.
func (s *Slide) drawLabel(rng *rand.Rand) Label {
	if rng.Float64() < s.CropPrevalence {
		return Parasitized
	}
	return Uninfected
}

// Stream yields the crops of a run in order, without end. It is the
// in-memory source for drift evaluation.
type Stream struct {
	seed     int64
	knobs    Knobs
	perSlide int
	next     int
	slideIdx int
	slide    Slide
}

// NewStream starts a stream at crop 0. cellsPerSlide <= 0 means
// DefaultCellsPerSlide.
func NewStream(seed int64, k Knobs, cellsPerSlide int) *Stream {
	if cellsPerSlide <= 0 {
		cellsPerSlide = DefaultCellsPerSlide
	}
	return &Stream{seed: seed, knobs: k, perSlide: cellsPerSlide, slideIdx: -1}
}

// Next returns the next crop; the sequence equals CellAt(seed, knobs,
// cellsPerSlide, 0), CellAt(..., 1), ...
func (st *Stream) Next() Sample {
	i := st.next
	st.next++
	si := i / st.perSlide
	if si != st.slideIdx {
		st.slide = NewSlide(SlideID(st.seed, si), newRand(mixSeed(st.seed, domSlide, uint64(si))), st.knobs)
		st.slideIdx = si
	}
	return st.slide.sample(newRand(mixSeed(st.seed, domCell, uint64(i))), i)
}

// finish applies the output format's artefacts to an in-memory image.
func (s *Slide) finish(img *image.RGBA) image.Image {
	if s.Knobs.JPEGQuality <= 0 {
		return img
	}
	var buf bytes.Buffer
	if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: s.Knobs.JPEGQuality}); err != nil {
		// Encoding an in-memory RGBA cannot fail short of a bug.
		panic(fmt.Sprintf("synth: jpeg encode: %v", err))
	}
	out, err := jpeg.Decode(&buf)
	if err != nil {
		panic(fmt.Sprintf("synth: jpeg decode: %v", err))
	}
	return out
}

// Encode writes img as PNG (fast compression) or, when k.JPEGQuality > 0,
// as JPEG of that quality.
func Encode(w io.Writer, img image.Image, k Knobs) error {
	if k.JPEGQuality > 0 {
		return jpeg.Encode(w, img, &jpeg.Options{Quality: k.JPEGQuality})
	}
	enc := png.Encoder{CompressionLevel: png.BestSpeed, BufferPool: pngPool{}}
	return enc.Encode(w, img)
}

// pngPool reuses the encoder's deflate state (about 1 MB), which otherwise
// costs as much as drawing the crop.
type pngPool struct{}

var pngBuffers sync.Pool

func (pngPool) Get() *png.EncoderBuffer {
	b, _ := pngBuffers.Get().(*png.EncoderBuffer)
	return b
}

func (pngPool) Put(b *png.EncoderBuffer) { pngBuffers.Put(b) }
